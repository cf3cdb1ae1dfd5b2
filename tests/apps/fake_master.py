"""A master of a few lines: three workers that stop when it dies, each with a grandchild in a
session of its own, handed to the sentry while the test holds the sentry stopped; then it
dies (tests/test_proctree.py). Usage: fake_master.py RECORDS_DIR."""

import os
import signal
import subprocess
import sys
import time

from governor.supervise import proctree
from governor.supervise.sentry import Sentry

records = sys.argv[1]
sentry = Sentry()
assert sentry.start() is None
print(sentry.pid, flush=True)
sys.stdin.readline()  # the test has stopped the sentry
for n in range(3):
    pid = os.fork()
    if pid == 0:
        proctree.set_death_signal(signal.SIGSTOP)
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
        with open(os.path.join(records, str(n)), "w") as fh:
            fh.write(f"{os.getpid()} {child.pid}")
        time.sleep(60)
    assert sentry.watch(pid, os.pidfd_open(pid))
while len(os.listdir(records)) < 3:
    time.sleep(0.01)
os.kill(os.getpid(), signal.SIGKILL)
