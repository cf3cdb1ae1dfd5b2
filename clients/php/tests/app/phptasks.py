"""Handlers the PHP client's tests enqueue (app.handlers "phptasks:*"): each run is written as a line
of a file in the records directory (TEST_RECORDS), so a test can tell what ran, how often and in
which order."""

import os
import random
import time

RECORDS = os.environ["TEST_RECORDS"]


def _note(kind, line):
    with open(os.path.join(RECORDS, kind), "a") as fh:
        fh.write(f"{line}\n")


def add(tag, a, b, scale=1):
    """Records its run under ``tag``; returns (a + b) * scale and what it was given."""
    _note("ran", tag)
    return {"sum": (a + b) * scale, "tag": tag}


def step(key, seq):
    """One job of an ordering key: a short random pause (so keys interleave), then "key seq"."""
    time.sleep(random.uniform(0, 0.01))
    _note("order", f"{key} {seq}")
    return seq


def fail(tag):
    _note("ran", tag)
    raise ValueError(f"boom {tag}")
