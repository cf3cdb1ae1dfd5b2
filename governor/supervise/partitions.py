"""Partition leases: which partitions of each partitioned queue this master serves.

A partitioned queue (``partitions: N``) keeps its jobs in N hash tags, one per
partition, so it spreads over a Redis Cluster's shards; per-key order is kept
inside each partition by its Lua scripts (the key's head, lua/lib/ordering.lua), whoever
serves it. Leases spread the partitions over the live masters (about N /
masters each, at most ``partitions_per_host``) so each host serves a stable
share: one script in the queue's home slot renews this master's leases (a
partition's lease is its holder's: one write a pass), hands back what is over
its share and takes free ones (partitions.lua). The
master calls it on its own clock; a SIGTERM'd master hands everything back at
once; a dead master's leases lapse after ``lease`` and are taken on the next
pass of another.

Only a master whose pool has a worker ready holds leases (one that cannot run
jobs must not keep them from a master that can). One without (an elastic pool at
``min: 0``, a crash-loop) *watches* instead: it holds nothing and is not counted
among the queue's masters, but its housekeeping looks at the partitions that no
serving master holds, so their jobs are counted (the autoscaler's signal: a pool
at 0 grows on them), promoted when due and reclaimed when their lease ran out.
The partitions other masters serve are theirs to scale for.

Workers learn what their master holds from a shared table (one byte per
partition in an anonymous shared mapping, written by the master, read by the
workers before each reserve), as they learn nothing else from the master
between jobs: no message, no wake-up.

Runs in: master.
"""

from __future__ import annotations

import enum
import logging
import mmap
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from governor.config import MAX_PARTITIONS
from governor.log import fields
from governor.protocol.queue import QueueKeys, register_partitions, run

log = logging.getLogger("governor.master")
REASSERT_EVERY = 30.0  # seconds (at most a lease) between writes of a count already registered (SET NX)


class LeaseState(str, enum.Enum):
    """A partition as this master sees it; every change goes through ``Partitioned._to``."""

    HELD = "held"        # ours: our workers reserve from it, we tick it
    UNHELD = "unheld"    # someone else's or nobody's


class HeldTable:
    """One byte per partition, 1 while this master holds it; shared with the workers it forks
    (an anonymous MAP_SHARED mapping survives fork). Only the master writes it. A job that
    scribbles on it can at worst make its own worker reserve from a partition another master
    serves: per-key order does not depend on it."""

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, MAX_PARTITIONS)

    def set(self, partition: int, held: bool) -> None:
        self._map[partition] = 1 if held else 0

    def held(self, partition: int) -> bool:
        return self._map[partition] == 1

    def all_held(self, partitions: int) -> list[int]:
        return [p for p in range(partitions) if self._map[p] == 1]

    def close(self) -> None:
        self._map.close()


@dataclass
class Partitioned:
    """One partitioned queue's leases as this master holds them."""

    queue: str
    partitions: int
    per_host: int | None
    table: HeldTable = field(default_factory=HeldTable)
    state: dict[int, LeaseState] = field(default_factory=dict)
    holders: dict[int, str] = field(default_factory=dict)  # every held partition -> its master
    masters: int = 0  # live masters serving the queue, at the last pass
    registered: bool = False  # the partition count is in Redis (and agrees with ours)
    reassert_at: float = 0.0  # monotonic: when to write the count again (REASSERT_EVERY)
    error: str | None = None  # why we serve nothing (the count in Redis differs)
    next_pass: float = 0.0
    joined: bool = False  # counted among the queue's live masters (a hold pass went through)
    serving: bool = False  # our pool had a worker ready at the last pass
    watched: list[int] = field(default_factory=list)  # while not serving: the ones nobody serves
    next_look: float = 0.0  # when the watched partitions are next looked at even if empty

    def held(self) -> list[int]:
        return sorted(p for p, s in self.state.items() if s is LeaseState.HELD)

    def _to(self, partition: int, new: LeaseState, why: str) -> None:
        old = self.state.get(partition, LeaseState.UNHELD)
        if old is new:
            return
        self.state[partition] = new
        self.table.set(partition, new is LeaseState.HELD)
        log.info("queue %s: partition %d %s (%s)", self.queue, partition,
                 "acquired" if new is LeaseState.HELD else "released", why,
                 extra=fields(queue=self.queue, reason=f"partition_{new.value}"))

    def apply(self, mine: list[int], why: str) -> list[int]:
        """The leases Redis says we hold now; returns the partitions newly ours."""
        gained = [p for p in mine if self.state.get(p) is not LeaseState.HELD]
        for p in self.held():
            if p not in mine:
                self._to(p, LeaseState.UNHELD, why)
        for p in gained:
            self._to(p, LeaseState.HELD, why)
        return gained

    def snapshot(self) -> dict[str, Any]:
        held_by: dict[str, list[int]] = {}
        for p, m in sorted(self.holders.items()):
            held_by.setdefault(m, []).append(p)
        return {"partitions": self.partitions, "per_host": self.per_host, "held": self.held(),
                "watched": list(self.watched),
                "masters": self.masters, "holders": held_by,
                "unheld": [p for p in range(self.partitions) if p not in self.holders],
                "error": self.error}


class PartitionLeases:
    """Every partitioned queue's leases for one master; the loop calls ``run`` on its clock."""

    def __init__(self, client: Any, prefix: str, master: str, lease: float) -> None:
        self.redis = client
        self.prefix = prefix
        self.master = master  # this master's name in the leases (unique per run)
        self.lease = lease
        self.queues: dict[str, Partitioned] = {}

    @property
    def interval(self) -> float:
        """How often leases are renewed and rebalanced: a joining master gets its share, and a
        drained one's partitions are taken, within about two of these."""
        return min(max(self.lease / 4, 0.25), 1.5)

    def keys(self, queue: str) -> QueueKeys:
        return QueueKeys(self.prefix, queue)

    def configure(self, config: Any) -> None:
        """A reload (``config``: the new Config): leases are taken and renewed for its lease."""
        self.lease = config.lease

    def sync(self, pools: Mapping[str, Any]) -> None:
        """Follows the pools (start, reload): a partitioned queue gets its table before its
        workers are forked; a removed one hands its leases back."""
        for name, pool in pools.items():
            cfg = pool.config
            if cfg.partitions and name not in self.queues:
                self.queues[name] = Partitioned(name, cfg.partitions, cfg.partitions_per_host)
            elif cfg.partitions:
                self.queues[name].per_host = cfg.partitions_per_host
        for name in [n for n in self.queues if n not in pools or pools[n].removed]:
            self._release(self.queues.pop(name), "queue removed")

    def table(self, queue: str) -> HeldTable | None:
        part = self.queues.get(queue)
        return part.table if part else None

    def lanes(self, queue: str) -> list[int] | None:
        """The partitions this master looks after (None for an unpartitioned queue): those it
        serves, or while it serves none, those it watches (no serving master holds them)."""
        part = self.queues.get(queue)
        return sorted(part.held() + part.watched) if part else None

    def next_wakeup(self, now: float) -> float:
        return min((p.next_pass for p in self.queues.values()), default=now + 60.0)

    def run(self, now: float, serving: set[str]) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
        """Renews and rebalances the leases that are due. ``serving``: the queues whose pool
        has a worker ready; a pool with none (backing off, a broken deploy, an elastic pool at
        0) hands its partitions to hosts that can run their jobs and watches the ones nobody
        serves. Returns, per queue, the partitions newly ours and the ones producers touched
        since the last pass (or watched ones due a look): both to be looked at now. Raises
        what Redis raises: the caller counts outages."""
        gained: dict[str, list[int]] = {}
        touched: dict[str, list[int]] = {}
        for part in self.queues.values():
            serves = part.queue in serving
            if now < part.next_pass and serves == part.serving:
                continue  # (a pool that gains or loses its last ready worker is seen at once)
            part.serving = serves
            part.next_pass = now + self.interval
            if part.registered and now >= part.reassert_at:
                part.registered = False  # said again: a failover can lose a recent write (async replication)
            if not part.registered and not self._register(part):
                continue  # (producers need the count even before our workers are up)
            if not serves:
                look = self._watch(part, now)
                if look:
                    touched[part.queue] = look
                continue
            part.watched = []
            reply = run(self.redis, self.keys(part.queue).partition_leases(
                self.master, int(self.lease * 1000), part.partitions, part.per_host or 0))[0]
            part.joined = True
            got, poked = self._read(part, reply)
            if got:
                gained[part.queue] = got
            if poked:
                touched[part.queue] = poked
        return gained, touched

    def _watch(self, part: Partitioned, now: float) -> list[int]:
        """A pass of a master that serves none of the queue: hands back what it held (leaving
        the live masters, so it holds no one's share down) and reads which partitions no
        serving master holds: those it watches. Returns the ones to look at now: newly
        watched, or all of them once per ``watch_interval`` (nobody hints us when a producer
        fills one, as the holder of a partition is hinted)."""
        part.apply([], "no worker ready to take its jobs")
        reply = run(self.redis, self.keys(part.queue).partition_leases(
            self.master, int(self.lease * 1000), part.partitions, 0, release=True))[0]
        part.joined = False
        self._read(part, reply)
        watched = [p for p in range(part.partitions) if p not in part.holders]
        look = [p for p in watched if p not in part.watched]
        if now >= part.next_look:
            look, part.next_look = watched, now + self.watch_interval
        part.watched = watched
        return look

    @property
    def watch_interval(self) -> float:
        """How often a watched partition is looked at while it is empty: as often as the
        housekeeper looks at an idle unpartitioned queue (min(15 s, lease / 2))."""
        return min(15.0, self.lease / 2)

    def release_all(self, why: str) -> None:
        """Drain: hands every partition back now, so other masters take them within a pass
        instead of after the lease (our workers finish their current jobs meanwhile)."""
        for part in self.queues.values():
            self._release(part, why)

    def _release(self, part: Partitioned, why: str) -> None:
        """Hands every partition back and leaves the queue's live masters (also holding none:
        counted as live, we would hold the others' shares down until our lease ran out)."""
        part.watched = []
        if not part.joined:
            return
        try:
            run(self.redis, self.keys(part.queue).partition_leases(
                self.master, int(self.lease * 1000), part.partitions, 0, release=True))
            part.joined = False
        except redis.RedisError as exc:
            log.warning("queue %s: could not hand partitions back (%s); they lapse after the lease",
                        part.queue, exc)
        part.apply([], why)

    def _register(self, part: Partitioned) -> bool:
        """Writes the partition count for producers (``Client.enqueue(key=...)``) and refuses to
        serve a queue whose count in Redis differs: moving keys between partitions would let a
        key's later job overtake an earlier one."""
        home = self.keys(part.queue)
        key = home.partitions_key
        stored = register_partitions(self.redis, home, part.partitions)  # (and a pause given before)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(home.waiting)
        pipe.zcard(home.delayed)
        stray = pipe.execute()
        if sum(stray):
            # enqueued without a key before any master had marked the queue partitioned (or
            # while it was not): no worker of a partitioned queue looks there
            log.error("queue %s: %d job(s) sit in the queue's unpartitioned keys, where no worker "
                      "of a partitioned queue takes them (enqueued without a key before a master "
                      "had started the partitioned queue); re-enqueue them with keys", part.queue,
                      sum(stray), extra=fields(queue=part.queue, reason="stray_jobs"))
        if stored != part.partitions:
            if part.error is None:
                part.error = (f"Redis holds {stored} partitions for queue {part.queue!r} and the "
                              f"config says {part.partitions}: changing partitions would break per-key "
                              f"order; serving none of its partitions (drain the queue and delete "
                              f"{key} to change it)")
                log.error("queue %s: %s", part.queue, part.error,
                          extra=fields(queue=part.queue, reason="partitions_mismatch"))
            part.next_pass = time.monotonic() + 30.0
            return False
        part.error = None
        part.registered = True
        part.reassert_at = time.monotonic() + min(REASSERT_EVERY, self.lease)
        return True

    def _read(self, part: Partitioned, reply: Any) -> tuple[list[int], list[int]]:
        if not (isinstance(reply, list) and len(reply) >= 3 and all(isinstance(x, int) for x in reply[:2])):
            raise ValueError(f"unexpected reply to partition leases: {reply!r:.80}")
        live, n = reply[0], reply[1]
        mine = [int(p) for p in reply[2:2 + n]]
        held = int(reply[2 + n])
        pairs = reply[3 + n:3 + n + 2 * held]
        touched = [int(p) for p in reply[3 + n + 2 * held:]]
        part.masters = live
        part.holders = {int(pairs[i]): pairs[i + 1].decode() for i in range(0, len(pairs), 2)}
        gained = part.apply(mine, f"{len(mine)} of {part.partitions} with {live} master(s)")
        return gained, [p for p in touched if p in mine]

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {name: part.snapshot() for name, part in self.queues.items()}
