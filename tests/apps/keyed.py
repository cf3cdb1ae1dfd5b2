"""Handlers of a partitioned queue that record the order in which each key's jobs ran
(tests/test_job_ops.py); the files 'broken' and 'go' in the records directory steer them."""

import os
import time

RECORDS = os.environ.get("TEST_RECORDS")  # the test's records directory (tests/harness/governor.py)

def step(key, seq):
    """Fails while the flag file 'broken' exists, else records "key seq" in the order run."""
    if os.path.exists(os.path.join(RECORDS, "broken")):
        raise ValueError("broken")
    with open(os.path.join(RECORDS, "order"), "a") as fh:
        fh.write(f"{key} {seq}\n")

def hold(key, seq):
    """Records its start, then holds its key until the file 'go' exists."""
    with open(os.path.join(RECORDS, "start"), "a") as fh:
        fh.write(f"{key} {seq}\n")
    deadline = time.monotonic() + 30
    while not os.path.exists(os.path.join(RECORDS, "go")) and time.monotonic() < deadline:
        time.sleep(0.01)
    with open(os.path.join(RECORDS, "order"), "a") as fh:
        fh.write(f"{key} {seq}\n")
