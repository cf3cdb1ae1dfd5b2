"""A handler that fails with an attacker-chosen message until a flag file (TEST_FLAG) exists
(tests/test_web.py)."""

import os

FLAG = os.environ.get("TEST_FLAG")  # the file whose existence fixes the handler (tests/test_web.py)


def once_broken(key):
    """Fails with an attacker-chosen message until the flag file exists."""
    if not os.path.exists(FLAG):
        raise ValueError(key)
    with open(FLAG + ".ran", "a") as fh:
        fh.write(key + "\n")
