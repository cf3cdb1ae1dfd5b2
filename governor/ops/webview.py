"""The page's view, gathered from Redis in small steps the master's loop takes between its timers.

The view is built in the master's own loop (no thread: the master forks its workers, and a
thread alive at a fork is a lock held at the wrong moment waiting to happen). But a view can be
big: a queue of 1024 partitions is 7,000 commands to count, and names, counts and records come
from a registry any client can write. So the work is cut in steps: each :meth:`ViewBuilder.step`
is one round trip of at most about STEP_LANES * 7 commands (a few milliseconds), the loop takes
one per pass and checks its hard limits between them, and the page waits for the build's end
(or is answered from a view at most CACHE old). Every part is bounded: registry entries read,
queues shown, partitions (config's bound), dead jobs, fleet records, their sizes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, TypedDict

from governor.config import QueueConfig
from governor.ops.status import (
    DeadJob,
    FleetRecord,
    MasterStatus,
    PartitionView,
    QueueCounts,
    dead_job,
    partition_view,
)
from governor.protocol.fleet import fleet
from governor.protocol.queue import Client, QueueKeys, _record
from governor.units import format_duration

CACHE = 1.0  # seconds a gathered view is reused
DEAD_SHOWN = 20  # dead jobs listed per queue
MAX_OTHER_QUEUES = 50  # queues shown beyond this master's own (names any producer can register)
REGISTRY_READ = 1000  # registry entries read per view
MASTERS_SHOWN = 100  # fleet records per view
STEP_LANES = 64  # lanes read per step: one round trip of about 450 commands


class QueueView(QueueCounts, total=False):
    """One queue on the page: its counts and what the page adds."""

    dead_jobs: list[DeadJob]  # the newest DEAD_SHOWN
    partitions: PartitionView  # holders keyed by their full registry name
    oldest_age: float | None  # this master's own figure, if it runs the queue
    limits: str  # as the config states them (limits_text)
    rate: float | None  # jobs done a second since the last view


class PageView(TypedDict):
    """What the page renders (``WebPage.page``), gathered at most every CACHE seconds."""

    queues: dict[str, QueueView]
    unreadable: list[str]  # registry entries that are no queue name
    unread: int  # registry entries beyond REGISTRY_READ
    more_queues: int  # registered queues beyond MAX_OTHER_QUEUES, not shown
    fleet: list[FleetRecord]  # this master's live record first
    at: float  # wall clock


def limits_text(q: QueueConfig | None) -> str:
    """A queue's fleet-wide limits, as its config states them."""
    if q is None:
        return ""
    parts = [f"{r.limit}/{format_duration(r.per)} {r.algorithm}" for r in q.rate_limits]
    parts += [f"limiter {name}" for name in q.limiters]
    if q.global_concurrency:
        parts.append(f"at most {q.global_concurrency} running")
    return "; ".join(parts)


def _add(total: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """Two lanes' counts as one: numbers add, ``paused`` if any lane is."""
    return {k: (total.get(k) or v if isinstance(v, bool) else total.get(k, 0) + v) for k, v in part.items()}


class ViewBuilder:
    """One build at a time, taken a step per call; the last finished view is kept."""

    def __init__(self, client: Client, queues: Callable[[], list[QueueConfig]],
                 local: Callable[[], dict[str, Any]], me: tuple[str, Callable[[], MasterStatus]]) -> None:
        self.client = client
        self.queues = queues
        self.local = local
        self.me = me
        self.view: tuple[float, PageView] | None = None  # (monotonic when finished, view)
        self.failed: tuple[float, str] | None = None  # (when, why) the last build failed
        self._steps: Iterator[None] | None = None
        self._done: dict[str, tuple[float, int]] = {}  # queue -> (when, done_total) at the last view

    @property
    def building(self) -> bool:
        return self._steps is not None

    def fresh(self, now: float) -> PageView | None:
        return self.view[1] if self.view and now - self.view[0] < CACHE else None

    def start(self, restart: bool = False) -> None:
        """Begins a build (``restart``: drops the one under way, e.g. after an action)."""
        if self._steps is None or restart:
            self._steps = self._build()

    def step(self) -> bool:
        """One bounded piece of the build; True when the build ended (its view or its failure)."""
        if self._steps is None:
            return False
        try:
            next(self._steps)
            return False
        except StopIteration:
            self.failed = None
        except Exception as exc:  # noqa: BLE001 - Redis away or garbled: the page says so
            self.failed = (time.monotonic(), str(exc)[:500])
        self._steps = None
        return True

    def _build(self) -> Iterator[None]:
        c = self.client
        try:
            names, unreadable, unread = c.registry(REGISTRY_READ)
        except ValueError as exc:  # (too big to read: said on the page, the config's queues shown)
            names, unreadable, unread = [], [str(exc)], 0
        yield
        configured = {q.name: q for q in self.queues()}
        others = sorted(set(names) - set(configured))
        queues: dict[str, dict[str, Any]] = {}
        for name in sorted(configured) + others[:MAX_OTHER_QUEUES]:
            try:
                yield from self._queue(name, queues)
            except ValueError as exc:  # (a partition count or stats any client could have written)
                queues[name] = {"error": str(exc)[:500]}
        masters = fleet(c.redis, c.prefix, MASTERS_SHOWN)
        now = time.monotonic()
        local = self.local()
        for name, counts in queues.items():
            if "error" in counts:
                continue
            counts["oldest_age"] = (local.get(name) or {}).get("oldest_age")
            counts["limits"] = limits_text(configured.get(name))
            then, before = self._done.get(name, (now, counts["done_total"]))
            counts["rate"] = (counts["done_total"] - before) / (now - then) if now - then > 0.5 else None
            if now - then > 0.5 or name not in self._done:
                self._done[name] = (now, counts["done_total"])
        me, live = self.me
        self.view = (now, {"queues": queues, "unreadable": unreadable, "unread": unread,
                           "more_queues": max(0, len(others) - MAX_OTHER_QUEUES),
                           "fleet": [{**live(), "id": me}, *(m for m in masters if m.get("id") != me)],
                           "at": time.time()})

    def _queue(self, name: str, queues: dict[str, dict[str, Any]]) -> Iterator[None]:
        """One queue's counts, newest dead jobs and partition holders, STEP_LANES lanes a step."""
        c = self.client
        lanes = c.lanes(name)
        yield
        counts: dict[str, Any] = {}
        for i in range(0, len(lanes), STEP_LANES):
            counts = _add(counts, c.counts(name, lanes[i:i + STEP_LANES]))
            yield
        counts.pop("partitions", None)
        counts["dead_jobs"] = []
        if counts["dead"]:
            yield from self._dead(name, lanes, counts)
        if len(lanes) > 1:
            held = c.partition_holders(name)
            yield
            counts["partitions"] = partition_view(len(lanes), held, name=str)
        queues[name] = counts

    def _dead(self, name: str, lanes: list[QueueKeys], counts: dict[str, Any]) -> Iterator[None]:
        """The queue's newest DEAD_SHOWN dead jobs, their lanes read STEP_LANES at a time."""
        newest: list[tuple[float, int, bytes]] = []
        for i in range(0, len(lanes), STEP_LANES):
            pipe = self.client.redis.pipeline(transaction=False)
            for lane in lanes[i:i + STEP_LANES]:
                pipe.zrevrange(lane.dead, 0, DEAD_SHOWN - 1, withscores=True)
            for n, entries in enumerate(pipe.execute()):
                newest += [(score, i + n, jid) for jid, score in entries]
            newest = sorted(newest, reverse=True)[:DEAD_SHOWN]
            yield
        pipe = self.client.redis.pipeline(transaction=False)
        for _, n, jid in newest:
            pipe.hget(lanes[n].meta, jid)
        records = pipe.execute()
        counts["dead_jobs"] = [dead_job(_record(name, jid.decode(errors="replace"), meta, None))
                               for (_, _, jid), meta in zip(newest, records, strict=True) if meta is not None]
        yield
