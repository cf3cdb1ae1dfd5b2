"""Handlers of the fleet tests (tests/fleet.py): heartbeats, spans, limited calls and per-key order,
written to the fleet's shared directory (TEST_SHARED), so runs on several hosts can be compared."""

import os
import time

import governor

SHARED = os.environ.get("TEST_SHARED")  # the fleet's shared records directory (tests/fleet.py)


def heartbeat(key, seconds):
    """Beats every 20 ms for `seconds` of its own running time, then records that it finished."""
    job = governor.current_job()
    path = os.path.join(SHARED, "beats")
    with open(os.path.join(SHARED, "fences"), "a") as fh:
        fh.write(f"{key} {job.attempt} {job.fencing_token} {os.getpid()}\n")
    ran, last = 0.0, time.monotonic()
    while ran < seconds:
        with open(path, "a") as fh:
            fh.write(f"{key} {os.getpid()} {time.time():.4f}\n")
        time.sleep(0.02)
        now = time.monotonic()
        ran += min(now - last, 0.1)  # time spent frozen does not count as running
        last = now
    with open(os.path.join(SHARED, "done"), "a") as fh:
        fh.write(f"{key} {os.getpid()}\n")


def stamp(key):
    """Records when it started, on this host's clock (the one Redis uses too)."""
    with open(os.path.join(SHARED, "starts"), "a") as fh:
        fh.write(f"{key} {os.getpid()} {time.time():.6f}\n")


def span(key, seconds):
    """Records its start and end, so overlapping runs can be counted."""
    with open(os.path.join(SHARED, "spans"), "a") as fh:
        fh.write(f"start {key} {os.getpid()} {time.time():.6f}\n")
    time.sleep(seconds)
    with open(os.path.join(SHARED, "spans"), "a") as fh:
        fh.write(f"end {key} {os.getpid()} {time.time():.6f}\n")


def limited(key):
    """Takes a start from the 'api' limiter first (raising RateLimited when there is none)."""
    governor.limit("api")
    with open(os.path.join(SHARED, "calls"), "a") as fh:
        fh.write(f"{key} {os.getpid()} {time.time():.6f}\n")


def ordered(key, seq, seconds=0.0):
    """Records its start and end per ordering key, so per-key order can be checked."""
    with open(os.path.join(SHARED, "order"), "a") as fh:
        fh.write(f"start {key} {seq} {os.getpid()} {time.time():.6f}\n")
    time.sleep(seconds)
    with open(os.path.join(SHARED, "order"), "a") as fh:
        fh.write(f"end {key} {seq} {os.getpid()} {time.time():.6f}\n")


def fence(key, seconds):
    job = governor.current_job()
    with open(os.path.join(SHARED, "fences"), "a") as fh:
        fh.write(f"{key} {job.attempt} {job.fencing_token} {os.getpid()}\n")
    time.sleep(seconds)
