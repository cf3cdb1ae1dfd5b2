"""Version 1 of the module ``ops`` (tests/test_job_ops.py): every job fails, so it is dead-lettered."""

import os

RECORDS = os.environ.get("TEST_RECORDS")  # the test's records directory (tests/harness/governor.py)

def flaky(key):
    raise ValueError("broken in v1: cannot reach the mail server for " + key)

def always_fails(key):
    raise RuntimeError("still broken")
