"""The master's open-file budget: how many more workers its descriptors allow.

Each worker costs the master two descriptors (its channel socket and its
pidfd). Scaling past RLIMIT_NOFILE used to kill the master with EMFILE and
every in-flight job with it; instead the master spawns what fits, keeps a
reserve for what it must still be able to do (answer `governor status` and
/healthz, reconnect to Redis, start the embedded Redis), and says in the log
and in status why a pool is short.

Runs in: master.
"""

from __future__ import annotations

import os
import resource

PER_WORKER = 2  # channel socket + pidfd
RESERVE = 32  # kept free for the control socket, HTTP clients and Redis reconnects


def raise_soft_limit() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit (capped by the kernel's nr_open); returns
    the (soft, hard) now in force. Any process may do this; the default soft 1024 is a
    relic of select(), which the master does not use."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            with open("/proc/sys/fs/nr_open") as fh:
                target = int(fh.read())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft, hard


def open_count() -> int:
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the one listdir itself opened
    except OSError:
        return 0


def workers_that_fit() -> tuple[int, str]:
    """How many more workers the descriptor limit allows, and the figures behind it."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    used = open_count()
    room = (soft - used - RESERVE) // PER_WORKER
    return max(room, 0), (f"open-file limit reached: {used} of {soft} descriptors in use, "
                          f"{RESERVE} kept in reserve, {PER_WORKER} per worker; raise LimitNOFILE "
                          "(systemd) or ulimit -n (hard limit)")
