"""Handlers that misbehave on purpose (ignore or block SIGTERM, close every descriptor, leave a
child behind, return what cannot be kept), copied as ``bad.py`` by tests/test_hardening.py."""

import os
import signal
import time

RECORDS = os.environ.get("TEST_RECORDS")  # the test's records directory (tests/harness/governor.py)


def _record(kind, key):
    with open(os.path.join(RECORDS, kind), "a") as fh:
        fh.write(f"{key} {os.getpid()}\n")


def ignore_term(key, seconds):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _record("start", key)
    time.sleep(seconds)
    _record("done", key)


def block_term(key, seconds):
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    _record("start", key)
    time.sleep(seconds)
    _record("done", key)


def socket_inodes(key):
    """The inodes of every socket this worker process holds."""
    inodes = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.append(target[8:-1])
    _record("sockets", " ".join(inodes) or "-")


def close_all_fds(key):
    records = os.open(os.path.join(RECORDS, "done"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.closerange(3, records)
    os.closerange(records + 1, 65536)
    time.sleep(0.3)
    os.write(records, f"{key} {os.getpid()}\n".encode())
    os.close(records)


def leave_child(key):
    """Starts a child in a session of its own, then kills its own worker (as the OOM killer would)."""
    import subprocess
    import sys
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    _record("child", str(child.pid))
    os.kill(os.getpid(), signal.SIGKILL)


def unserialisable(key):
    _record("done", key)
    return {1, 2, 3}


def big(key, n):
    _record("done", key)
    return "x" * n
