"""Handlers for governor-client's Node tests (clients/node/test): a master started by
test/harness.js runs them. Each records what it ran in the directory ``TEST_RECORDS``."""

import json
import os
import time

RECORDS = os.environ.get("TEST_RECORDS", ".")


def _append(name, line):
    with open(os.path.join(RECORDS, name), "a") as fh:
        fh.write(line + "\n")


def echo(*args, **kwargs):
    """Records its arguments (one line per run) and returns them."""
    _append("runs", json.dumps({"args": args, "kwargs": kwargs}))
    return {"args": list(args), "kwargs": kwargs}


def step(key, seq):
    """Records "key seq" in the order the jobs ran (a partitioned queue runs a key's in order)."""
    time.sleep(0.002)
    _append("order", f"{key} {seq}")
