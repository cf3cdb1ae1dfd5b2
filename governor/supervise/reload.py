"""What a reload changes, and its changes to the pools (master process).

SIGHUP parses a whole new Config; ``plan_reload`` compares it with the running
one and the master's pools and says what to do: refuse (a change that would
break an ordering guarantee), keep what only a restart can change, add, update
or drain pools. It is pure (no process, no Redis), so every rule is unit-tested
without ``governor run``. The master carries the plan out (``apply_to_pools``)
and hands the new Config to each collaborator's ``configure``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from governor.config import Config, QueueConfig, mask_url
from governor.supervise.pool import Pool

log = logging.getLogger("governor.master")


@dataclass(frozen=True)
class Plan:
    """A reload, decided: ``refused`` (with the queue it names) means nothing changes."""

    config: Config  # what takes effect: the new file, with what needs a restart kept as it runs
    refused: str | None = None
    refused_queue: str | None = None
    notes: tuple[str, ...] = ()  # changes that take effect on restart (logged as warnings)
    add: tuple[QueueConfig, ...] = ()
    update: tuple[QueueConfig, ...] = ()
    remove: tuple[str, ...] = ()  # pools to drain (their queue is gone from the file)


def plan_reload(old: Config, new: Config, pools: Mapping[str, Any]) -> Plan:
    """The plan for moving from ``old`` to ``new``; ``pools``: the master's pools by queue
    name (a removed one still draining among them), each with its ``config`` and ``removed``."""
    for q in new.queues.values():
        was = pools.get(q.name)
        if was is not None and was.config.partitions != q.partitions:
            return Plan(old, refused_queue=q.name, refused=(
                f"reload refused, keeping the running config: queue {q.name}: partitions "
                f"{was.config.partitions or 'none'} -> {q.partitions or 'none'} would move keys between "
                "partitions and break their order (drain the queue and restart with a new queue name "
                "instead)"))
    notes = []
    if new.redis != old.redis or new.state_dir != old.state_dir or new.data_dir != old.data_dir:
        notes.append(f"reload: redis and state_dir changes take effect on restart; keeping "
                     f"{mask_url(old.redis.url)}")
        new = dataclasses.replace(new, redis=old.redis, state_dir=old.state_dir, data_dir=old.data_dir)
    if new.app.preload != old.app.preload:
        notes.append("reload: app.preload changes take effect on restart")
    return Plan(new, notes=tuple(notes),
                add=tuple(q for q in new.queues.values() if q.name not in pools),
                update=tuple(q for q in new.queues.values() if q.name in pools),
                remove=tuple(name for name, pool in pools.items()
                             if name not in new.queues and not pool.removed))


def apply_to_pools(plan: Plan, pools: dict[str, Pool], settings_key: Callable[[QueueConfig], Any],
                   added: Callable[[str], None]) -> None:
    """Carries out what ``plan`` says of the pools: a new queue gets its pool (``added``: its
    metrics primed), an updated one its new settings (workers forked with other settings, by
    ``settings_key``, are replaced as they finish), a removed one drains."""
    for q in plan.add:
        pools[q.name] = Pool(q, settings_key(q))
        added(q.name)
        log.info("reload: queue %s added with %d worker(s)", q.name, pools[q.name].desired())
    for q in plan.update:
        pool = pools[q.name]
        before, range_before = pool.desired(), pool.config.autoscale and (pool.config.autoscale.min,
                                                                          pool.config.autoscale.max)
        if pool.update(q, settings_key(q)):
            log.info("reload: queue %s settings changed; replacing its workers as they finish", q.name)
        if q.autoscale and range_before != (q.autoscale.min, q.autoscale.max):
            log.info("reload: queue %s elastic, %d to %d workers (now %d)", q.name, q.autoscale.min,
                     q.autoscale.max, pool.desired())
        elif before != pool.desired():
            log.info("reload: queue %s concurrency %d -> %d", q.name, before, pool.desired())
    for name in plan.remove:
        pools[name].removed = True
        log.info("reload: queue %s removed; draining its workers", name)
