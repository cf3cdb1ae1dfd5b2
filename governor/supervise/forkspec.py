"""What makes a worker outdated: derived from what it is forked with, in one place.

A worker is handed everything it needs by fork (``worker.WorkerSpec``); after a
reload, a worker forked with anything different must be replaced. Listing the
settings that matter by hand is how a queue switched to ``user: nobody`` kept
running jobs as root (issue 21, item 17): a new field of the spec is now part of
the comparison unless it is declared here as the worker's own (its index, slot,
jittered recycle limits) or as the pool's business (how many workers it has).
"""

from __future__ import annotations

import dataclasses
from typing import Any

# Fields of a WorkerSpec that differ from one worker to the next, or belong to this master's
# life rather than to the config: never a reason to replace a worker.
PER_WORKER = frozenset({"index", "master_pid", "max_jobs", "max_age", "sentry", "board", "slot",
                        "held", "hint_key"})
# Fields of a QueueConfig that size the pool and never reach a worker.
POOL_ONLY = {"concurrency": 0, "autoscale": None, "partitions_per_host": None}


def outdating_key(spec: Any) -> tuple[tuple[str, Any], ...]:
    """Every setting a worker forked from ``spec`` runs with (compared with ==): two workers
    whose keys differ were forked from different configs, and the older must go."""
    key = []
    for f in dataclasses.fields(spec):
        if f.name in PER_WORKER:
            continue
        value = getattr(spec, f.name)
        if f.name == "queue":
            value = dataclasses.replace(value, **POOL_ONLY)
        key.append((f.name, value))
    return tuple(key)
