"""Version 2 of the module ``ops`` (tests/test_job_ops.py): the fix, copied over version 1 before
the dead jobs are retried."""

import os

RECORDS = os.environ.get("TEST_RECORDS")  # the test's records directory (tests/harness/governor.py)

def flaky(key):
    """v2: fixed, and it says so in the records, so the retried runs are counted."""
    with open(os.path.join(RECORDS, "fixed"), "a") as fh:
        fh.write(key + "\n")

def always_fails(key):
    raise RuntimeError("still broken")
