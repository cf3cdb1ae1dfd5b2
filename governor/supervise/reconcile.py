"""Desired minus actual, per pool, every pass (resque-pool's ``worker_delta_for``). Runs in: master.

Policies (config, reload, the autoscaler, crash backoff) only change what a pool *desires*;
this pass is the one place that spawns or drains the difference.
"""

from __future__ import annotations

import time
from collections.abc import Callable, MutableMapping

from governor.supervise.enforce import max_concurrent_recycles
from governor.supervise.pool import Pool

SPAWN_SLICE = 0.02  # seconds of forking per pass of the loop before it looks at its timers again


def reconcile(pools: MutableMapping[str, Pool], now: float, *, stopping: bool,
              spawn: Callable[[Pool, float], bool], removed: Callable[[str], None]) -> bool:
    """One pass over every pool; True when a burst of spawns was cut short (the loop comes
    back at once). Forks are the loop's slowest work (ms each): a burst of respawns (after a
    wave of kills) is cut into slices, so the hard limits and samples due meanwhile come first.
    ``removed``: a pool removed by a reload has no worker left and is gone."""
    pending = False
    for name, pool in list(pools.items()):
        if stopping:
            for w in pool.taking_work():
                w.drain("drain")
        else:
            for w in pool.to_replace(max_concurrent_recycles(pool.config.settings.recycle, pool.desired())):
                w.drain("reload")
            delta = pool.delta()
            if delta > 0 and pool.may_spawn(now):
                if pool.backoff:
                    spawn(pool, now)  # one probe per backoff step, not a burst
                    pool.respawn_at = now + pool.backoff
                else:
                    for _ in range(delta):
                        if time.monotonic() - now > SPAWN_SLICE:
                            pending = True  # the rest on the next pass, at once
                            break
                        if not spawn(pool, now):
                            break  # out of descriptors or memory: retried in a second
            elif delta < 0:
                for w in pool.excess(-delta):
                    w.drain("scale_down" if pool.config.autoscale else "drain")
            if pool.delta() <= 0:
                pool.spawn_error = None
        if pool.removed and not pool.workers:
            del pools[name]
            removed(name)
    return pending
