"""The handlers most tests run (app.handlers ``tasks:*``): they record what ran as "key pid"
lines in files of the test's records directory, which the Governor harness names in TEST_RECORDS."""

import os
import time

RECORDS = os.environ.get("TEST_RECORDS")  # the test's records directory (tests/harness/governor.py)


def _record(kind, key):
    with open(os.path.join(RECORDS, kind), "a") as fh:
        fh.write(f"{key} {os.getpid()}\n")


def record(key):
    _record("done", key)


def sleep_then_record(key, seconds):
    _record("start", key)
    time.sleep(seconds)
    _record("done", key)


def fail(key):
    raise ValueError(f"boom {key}")


def _rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def hog(key, mb, limit_mb=None, hold=0.0):
    """Allocates and touches mb MiB in 10 MiB steps; notes when its RSS crosses limit_mb."""
    chunks, crossed = [], False
    _record("start", key)
    for _ in range(mb // 10):
        chunks.append(b"x" * (10 * 1024 * 1024))
        if limit_mb and not crossed and _rss() > limit_mb * 1024 * 1024:
            crossed = True
            _record("crossed", repr(time.time()))
        time.sleep(0.005)
    time.sleep(hold)
    _record("done", key)
    return len(chunks)


def hog_in_child(key, mb):
    import subprocess
    import sys
    child = subprocess.Popen([sys.executable, "-c",
                              f"import time; x = [b'x' * (10 << 20) for _ in range({mb // 10})]; time.sleep(60)"])
    _record("grandchild", str(child.pid))
    child.wait()
    _record("done", key)


def catch_soft_timeout(key, sleep):
    from governor import SoftTimeLimitExceeded
    _record("start", key)
    try:
        time.sleep(sleep)
    except SoftTimeLimitExceeded:
        _record("soft", key)
        time.sleep(sleep)  # cleanup that overruns: the hard limit must still apply
    _record("done", key)


def blocked_in_c(key, sleep):
    import signal
    import threading
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGTERM, signal.SIGINT})
    _record("start", key)
    t = threading.Thread(target=time.sleep, args=(sleep,))
    t.start()
    t.join()  # in C, with every catchable signal blocked
    _record("done", key)


def pid(key):
    _record("done", key)


def segfault(key):
    import ctypes
    _record("start", key)
    ctypes.string_at(0)


def allocate(key, mb):
    try:
        block = b"x" * (mb << 20)
    except MemoryError:
        _record("memoryerror", key)
        raise
    _record("done", key)
    return len(block)
