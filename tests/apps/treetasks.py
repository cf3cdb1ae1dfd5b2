"""Handlers that leave process trees behind (grandchildren in sessions of their own, double-forked
daemons), for tests/test_proctree.py."""

import os
import subprocess
import sys
import time

RECORDS = os.environ.get("TEST_RECORDS")  # the test's records directory (tests/harness/governor.py)


def _record(kind, value):
    with open(os.path.join(RECORDS, kind), "a") as fh:
        fh.write(f"{value}\n")


def _setsid_child(code):
    child = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    _record("grandchild", child.pid)
    return child


def setsid_hog(mb):
    """A grandchild in a session of its own allocates mb MiB and holds it."""
    _setsid_child(f"import time; x = [b'x' * (10 << 20) for _ in range({mb // 10})]; time.sleep(60)").wait()


def setsid_sleeper():
    _setsid_child("import time; time.sleep(60)").wait()


# the classic daemon: fork, setsid, fork again, the middle process exits; the daemon notes its pid
DAEMON = """
import os, sys, time
os.setsid()
if os.fork():
    os._exit(0)
with open(sys.argv[1], "a") as fh:
    fh.write(f"{os.getpid()}\\n")
time.sleep(float(sys.argv[2]))
"""


def daemon_then_sleep(daemon_seconds, seconds):
    subprocess.run([sys.executable, "-c", DAEMON, os.path.join(RECORDS, "grandchild"), str(daemon_seconds)],
                   check=True)
    time.sleep(seconds)


def daemon_and_children_exit(key):
    """An orphaned daemon exits while the job's own children exit too: their exit codes must survive."""
    plain = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.6); raise SystemExit(3)"])
    own = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.6); raise SystemExit(4)"],
                           start_new_session=True)
    daemon_then_sleep(0.1, 0)
    deadline = time.monotonic() + 3
    while not os.path.exists(os.path.join(RECORDS, "grandchild")) and time.monotonic() < deadline:
        time.sleep(0.01)
    daemon = int(open(os.path.join(RECORDS, "grandchild")).read().split()[0])
    _record("daemon", daemon)  # it exits after 0.1 s, a zombie of the worker (its adoptive parent)
    time.sleep(0.3)  # let the job's own children exit before waiting for them
    _record("codes", f"{plain.wait()},{own.wait()}")
