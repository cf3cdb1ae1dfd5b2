"""The chaos run's one handler (tests/chaos.py): "start"/"done" lines with a timestamp in the run's
log (TEST_CHAOS_LOG), so no job is seen running in two workers at once."""

import os
import random
import time

LOG = os.environ.get("TEST_CHAOS_LOG")  # the run's log (tests/chaos.py)


def chaos(key):
    with open(LOG, "a") as fh:
        fh.write(f"start {key} {os.getpid()} {time.time()!r}\n")
    time.sleep(random.uniform(0.002, 0.01))
    with open(LOG, "a") as fh:
        fh.write(f"done {key} {os.getpid()} {time.time()!r}\n")
