"""What a reload changes (master process; a pure function).

SIGHUP parses a whole new Config; ``plan_reload`` compares it with the running
one and the master's pools and says what to do: refuse (a change that would
break an ordering guarantee), keep what only a restart can change, add, update
or drain pools. The master applies the plan and hands the new Config to each
collaborator (``configure``); nothing here touches a process or Redis, so every
rule is unit-tested without ``governor run``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from governor.config import Config, QueueConfig, mask_url


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
    lease_changed: bool = False


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
                             if name not in new.queues and not pool.removed),
                lease_changed=new.lease != old.lease)
