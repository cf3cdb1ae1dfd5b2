"""Keeping the master's secrets out of a worker's environment, before any job code runs.

A worker is forked, not executed: it inherits the master's ``os.environ`` and the
block of ``NAME=value`` strings the kernel laid out when the master was started
(what ``/proc/self/environ`` shows, whatever ``os.environ`` says since). The
README tells operators to put the web token and Redis passwords in variables
(``web.token: ${GOVERNOR_WEB_TOKEN}``); a job running as ``user: nobody`` must
not read them back. So the worker unsets every variable the config interpolated
into a secret setting and blanks its value in that original block too.

Runs in: worker, between fork and its first job.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable


def _environ_block() -> tuple[int, int] | None:
    """(start, end) addresses of this process's original environment strings (proc(5): fields
    50 and 51 of /proc/self/stat), or None when they cannot be read."""
    try:
        with open("/proc/self/stat", "rb") as fh:
            stat = fh.read()
        fields = stat[stat.rindex(b")") + 2:].split()
        return int(fields[47]), int(fields[48])  # env_start, env_end (counted after "pid (comm)")
    except (OSError, ValueError, IndexError):
        return None


def forget_environment(names: Iterable[str]) -> list[str]:
    """Unsets ``names`` and overwrites their values, in place, in the environment block the
    process started with; returns the names that were set."""
    names = {n for n in names if n}
    gone = [n for n in sorted(names) if n in os.environ]
    for name in gone:
        os.environ.pop(name, None)
    block = _environ_block()
    if not names or block is None:
        return gone
    start, end = block
    try:
        with open("/proc/self/environ", "rb") as fh:
            original = fh.read()
    except OSError:
        return gone
    if len(original) > end - start:
        return gone  # (not the block we think it is: leave it alone)
    offset = 0
    for entry in original.split(b"\0"):
        name, eq, value = entry.partition(b"=")
        if eq and name.decode("utf-8", "replace") in names and value:
            ctypes.memset(start + offset + len(name) + 1, 0, len(value))
        offset += len(entry) + 1
    return gone
