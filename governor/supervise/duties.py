"""The master's periodic duties behind one small protocol (master process).

After each batch of events the loop runs its duties in a fixed order and then
sleeps until the earliest one is due. Every duty answers the same two
questions: ``due(now)`` (when must the loop wake for it next; ``math.inf``: not
on its own account) and ``run(now)`` (called on every pass; it does nothing
until it is due). A duty that talks to Redis says so (``redis = True``): what
Redis (or a garbled reply) raises in it is one outage, counted by the one
policy here (the ``RedisHealth`` they share), and never stops the passes of
the others.

The order matters for hard-limit latency: the reports are read before the
limits are enforced (what runs, since when), and the local steps (hard
deadlines, memory samples, leaving workers, restarts of the sentry and the
embedded Redis, server expiry) come before the Redis round trips, so a slow
Redis never delays a kill that is due.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import redis

from governor.supervise.autoscale import Autoscaler
from governor.supervise.enforce import (
    LEAVE_MARGIN,
    enforce_hard_deadlines,
    enforce_leaving,
    sample_memory,
)
from governor.supervise.fleetrecord import FleetRegistry
from governor.supervise.handlerstats import HandlerStats
from governor.supervise.housekeeping import Housekeeper, all_lanes
from governor.supervise.partitions import PartitionLeases
from governor.supervise.pool import Pool
from governor.supervise.process import State
from governor.supervise.redishealth import REPLY_ERRORS, RedisHealth
from governor.supervise.reports import WorkerReports

log = logging.getLogger("governor.master")

REDIS_FAILURES = (redis.RedisError, *REPLY_ERRORS)


class Duty(Protocol):
    """One thing the loop does on its clock."""

    redis: bool  # talks to Redis: what Redis raises is an outage, not a crash of the master

    def due(self, now: float) -> float:
        """When the loop must next wake for this duty (``math.inf``: not on its own account)."""
        ...

    def run(self, now: float) -> None:
        """One pass: does what is due, nothing else."""
        ...


def _never(now: float) -> float:
    return math.inf


def _earliest(times: Iterable[float | None]) -> float:
    return min((t for t in times if t is not None), default=math.inf)


class Step:
    """A local step of the loop's own (no Redis), run on every pass."""

    redis = False

    def __init__(self, run: Callable[[float], None], due: Callable[[float], float] = _never) -> None:
        self.run = run  # type: ignore[method-assign]
        self.due = due  # type: ignore[method-assign]


class Duties:
    """The duties in the order the loop runs them, with one policy for Redis failures."""

    def __init__(self, duties: Sequence[Duty], failed: Callable[[Exception], None]) -> None:
        self.duties = list(duties)
        self.failed = failed  # the Redis-health monitor: counts the outage, probes until it ends

    def run(self, now: float) -> None:
        for duty in self.duties:
            if not duty.redis:
                duty.run(now)
                continue
            try:
                duty.run(now)
            except REDIS_FAILURES as exc:
                self.failed(exc)

    def next_wakeup(self, now: float) -> float:
        return min(duty.due(now) for duty in self.duties)

    def configure(self, config: Any) -> None:
        """A reload: every duty that holds a setting takes the new Config's."""
        for duty in self.duties:
            configure = getattr(duty, "configure", None)
            if configure:
                configure(config)


class Reports:
    """Each worker's scoreboard report, read on the master's clock."""

    redis = False

    def __init__(self, reports: WorkerReports, pools: Mapping[str, Pool]) -> None:
        self.reports, self.pools = reports, pools

    def due(self, now: float) -> float:
        return self.reports.next_scan

    def run(self, now: float) -> None:
        if now >= self.reports.next_scan:
            self.reports.scan(self.pools, now)


class HardDeadlines:
    """Kills every run past its hard time limit."""

    redis = False

    def __init__(self, pools: Mapping[str, Pool]) -> None:
        self.pools = pools

    def due(self, now: float) -> float:
        return _earliest(w.hard_deadline() for p in self.pools.values() for w in p.workers.values())

    def run(self, now: float) -> None:
        enforce_hard_deadlines(self.pools.values(), now)


class Servers:
    """Clients of the control socket and the HTTP port that did not finish in time: closed,
    never waited for."""

    redis = False

    def __init__(self, servers: Callable[[], Iterable[Any]]) -> None:
        self.servers = servers

    def due(self, now: float) -> float:
        return _earliest(s.next_deadline() for s in self.servers() if s)

    def run(self, now: float) -> None:
        for server in self.servers():
            if server:
                server.expire(now)


class WebView:
    """The page's view: one bounded round trip per pass, between the kills."""

    redis = False  # (the page counts its own failures: it shows them)

    def __init__(self, web: Any) -> None:
        self.web = web

    def due(self, now: float) -> float:
        return now if self.web.busy() else math.inf

    def run(self, now: float) -> None:
        self.web.step()

    def configure(self, config: Any) -> None:
        self.web.token = config.web.token  # (a token set or changed takes effect at once)


class Samples:
    """Memory samples (and the limits on them), and draining workers held to their word."""

    redis = False

    def __init__(self, pools: Mapping[str, Pool], shutdown_timeout: float, redis_ok: Callable[[], bool]) -> None:
        self.pools, self.redis_ok = pools, redis_ok
        self.leave_within = shutdown_timeout + LEAVE_MARGIN

    def configure(self, config: Any) -> None:
        self.leave_within = config.shutdown_timeout + LEAVE_MARGIN

    def due(self, now: float) -> float:
        return _earliest(p.next_sample for p in self.pools.values() if p.workers)

    def run(self, now: float) -> None:
        for pool in self.pools.values():
            sample_memory(pool, now)
            enforce_leaving(pool, now, self.leave_within, self.redis_ok())


class Partitions:
    """Partition leases: renewed, rebalanced; what was gained or touched is looked at now."""

    redis = True

    def __init__(self, leases: PartitionLeases, housekeeper: Housekeeper, health: RedisHealth,
                 pools: Mapping[str, Pool], stopping: Callable[[], Any]) -> None:
        self.leases, self.housekeeper, self.health, self.pools, self.stopping = leases, housekeeper, health, pools, stopping

    def configure(self, config: Any) -> None:
        self.leases.configure(config)

    def due(self, now: float) -> float:
        # (no wake-up for a pass that would not run: asked for while Redis was away, a time
        # already past woke the loop at once, again and again)
        if not self.health.ok or self.stopping():
            return math.inf
        return self.leases.next_wakeup(now)

    def run(self, now: float) -> None:
        if not self.health.ok or self.stopping():
            return
        serving = {name for name, p in self.pools.items() if any(w.state in (State.IDLE, State.BUSY) for w in p)}
        gained, touched = self.leases.run(now, serving)
        for queue, parts in gained.items():
            self.housekeeper.look_now(queue, parts, fresh=True)
        for queue, parts in touched.items():
            self.housekeeper.look_now(queue, parts)


class Housekeeping:
    """Lease renewals, promotions, reclaims and lost jobs (the housekeeper counts its own
    Redis failures and, while Redis is away, probes for it: ``RedisHealth.reachable``)."""

    redis = False

    def __init__(self, housekeeper: Housekeeper, leases: PartitionLeases, pools: Mapping[str, Pool]) -> None:
        self.housekeeper, self.leases, self.pools = housekeeper, leases, pools
        self.lanes: dict[str, list[int | None]] = {}  # this pass's lanes, shared with HandlerFigures

    def configure(self, config: Any) -> None:
        """A reload: leases are renewed under a changed lease at once (the housekeeper is
        given it here, its scheduler, rather than growing a method of its own)."""
        if config.lease != self.housekeeper.lease:
            self.housekeeper.next_renew = 0.0
        self.housekeeper.lease = config.lease

    def due(self, now: float) -> float:
        return self.housekeeper.next_wakeup(now)

    def run(self, now: float) -> None:
        self.lanes = {name: self.leases.lanes(name) if p.config.partitions else all_lanes(p.config)
                      for name, p in self.pools.items()}
        self.housekeeper.run(now, self.pools, self.lanes)


class Registry:
    """This master's record in the fleet registry."""

    redis = True

    def __init__(self, registry: FleetRegistry, health: RedisHealth) -> None:
        self.registry, self.health = registry, health

    def configure(self, config: Any) -> None:
        self.registry.configure(config)

    def due(self, now: float) -> float:
        # (while Redis is away the probe says when it is back: see Housekeeping)
        return self.registry.next_wakeup() if self.health.ok else math.inf

    def run(self, now: float) -> None:
        if self.health.ok and now >= self.registry.next_beat:
            self.registry.run(now)


class HandlerFigures:
    """Per-handler figures, and the limits learnt from them (timeout.adaptive)."""

    redis = True

    def __init__(self, handlers: HandlerStats, housekeeper: Housekeeper, health: RedisHealth,
                 pools: Mapping[str, Pool], lanes: Housekeeping, stopping: Callable[[], Any]) -> None:
        self.handlers, self.housekeeper, self.health = handlers, housekeeper, health
        self.pools, self.lanes, self.stopping = pools, lanes, stopping

    def configure(self, config: Any) -> None:
        self.handlers.configure(config)

    def due(self, now: float) -> float:
        return self.handlers.next_wakeup() if self.health.ok and not self.stopping() else math.inf

    def run(self, now: float) -> None:
        if self.health.ok and not self.stopping() and now >= self.handlers.next_run:
            self.handlers.run(now, self.pools, self.lanes.lanes, lambda q: tuple(
                self.housekeeper.stats(q, now).get(k) for k in ("done", "dead", "active")))


class Scaling:
    """The autoscaler, on the figures just read; what it changes (a pool's desired size) the
    loop's reconcile carries out."""

    redis = False

    def __init__(self, scaler: Autoscaler, pools: Mapping[str, Pool], housekeeper: Housekeeper,
                 stopping: Callable[[], Any]) -> None:
        self.scaler, self.pools, self.housekeeper, self.stopping = scaler, pools, housekeeper, stopping

    def configure(self, config: Any) -> None:
        self.scaler.configure(config)

    def due(self, now: float) -> float:
        return self.scaler.next_wakeup(now, self.pools)

    def run(self, now: float) -> None:
        self.scaler.run(now, self.pools, self.housekeeper.stats, stopping=bool(self.stopping()))


def build(*, reports: Any, pools: Mapping[str, Any], trees: Any, endpoints: Any, shutdown_timeout: float,
          housekeeper: Any, health: Any, partitions: Any, registry: Any, handlers: Any, scaler: Any,
          stopping: Callable[[], Any]) -> Duties:
    """The master's duties in the order its loop runs them: what runs and since when before the
    limits, the limits before anything slower, Redis work last (see each duty for why)."""
    lanes = Housekeeping(housekeeper, partitions, pools)
    return Duties([
        Reports(reports, pools),  # before the limits: what runs, since when
        HardDeadlines(pools),
        Step(trees.restart),
        Servers(endpoints.servers),
        *([WebView(endpoints.web)] if endpoints.web else []),
        Samples(pools, shutdown_timeout, lambda: health.ok),
        Step(trees.restart_embedded),
        Partitions(partitions, housekeeper, health, pools, stopping),
        lanes,
        Registry(registry, health),
        HandlerFigures(handlers, housekeeper, health, pools, lanes, stopping),
        Scaling(scaler, pools, housekeeper, stopping)], health.failed)
