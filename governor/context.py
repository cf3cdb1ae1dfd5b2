"""What a handler may know about the run it is part of: ``governor.current_job()``.

The fencing token is the point: a lease makes sure one run at a time holds a
job, but a run that was stopped (its host cut off, its lease lost) may have
sent a write that lands late. A store that remembers the highest token it
accepted and refuses a lower one makes such a write harmless, whatever the
network did. The token only grows, fleet-wide, across every run of every job
of the queue (counted in the same script that reserves the job: no extra
round trip); on a Redis Cluster, strictly within each partition of a
partitioned queue and across them as the shards' clocks go (lua/lib/leases.lua
``next_fence``, README "Fencing tokens").
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class JobContext:
    id: str
    queue: str
    handler: str
    attempt: int  # 1 for the first run
    fencing_token: int  # compare it, never reuse it: a later run always has a larger one
    deadline: float | None  # the hard time limit as a Unix time (time.time()), if any


# A context variable, not a global: with jobs_per_worker > 1 each thread and each asyncio
# task of a worker runs its own job, and each sees its own (a task copies its context when
# it is created; a thread starts with an empty one).
_current: ContextVar[JobContext | None] = ContextVar("governor_current_job", default=None)


def current_job() -> JobContext | None:
    """The job this thread or task is running, or None outside a handler."""
    return _current.get()


def _enter(job: JobContext | None) -> None:
    """Set by the worker around each handler call (in the thread or task that runs it)."""
    _current.set(job)
