"""What the master shows of itself (master process): the status ``governor status`` reads over
the control socket, the record the fleet sees, the state behind ``/metrics``, the one-line
STATUS systemd shows.

Built from the master's collaborators, handed over as arguments (the setting and the
stopping state as callables: a reload or a signal changes them), so that nothing here
reaches back into master.py. Reading is all it does.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from governor import __version__
from governor.config import Config, mask_url
from governor.ops.health import Health
from governor.ops.metrics import CONTENT_TYPE, Metrics
from governor.supervise.autoscale import Autoscaler
from governor.supervise.exits import Stopping
from governor.supervise.fleetrecord import FleetRegistry
from governor.supervise.handlerstats import HandlerStats
from governor.supervise.housekeeping import Housekeeper
from governor.supervise.partitions import PartitionLeases
from governor.supervise.pool import Pool
from governor.supervise.redishealth import RedisHealth
from governor.supervise.reports import WorkerReports


class Snapshots:
    """The master's read model: each answer gathered from its collaborators as of now."""

    def __init__(self, *, pid: int, started: float, config: Callable[[], Config],
                 stopping: Callable[[], Stopping | None], pools: Mapping[str, Pool], reports: WorkerReports,
                 housekeeper: Housekeeper, redis_health: RedisHealth, handlers: HandlerStats,
                 partitions: PartitionLeases, registry: FleetRegistry, scaler: Autoscaler,
                 health: Health, metrics: Metrics) -> None:
        self.pid, self.started, self.config, self.stopping = pid, started, config, stopping
        self.pools, self.reports, self.housekeeper, self.redis_health = pools, reports, housekeeper, redis_health
        self.handlers, self.partitions, self.registry, self.scaler = handlers, partitions, registry, scaler
        self.health, self.metrics = health, metrics

    def status(self) -> dict[str, Any]:
        """``governor status`` (through the control socket)."""
        now = time.monotonic()
        self.reports.scan(self.pools, now)  # each worker's job as of now
        config, stopping = self.config(), self.stopping()
        return {
            "master": {"pid": self.pid, "host": socket.gethostname(), "uptime": round(now - self.started, 3),
                       "config": config.source, "stopping": stopping and stopping.value,
                       "redis": mask_url(config.redis.url),
                       "redis_ok": self.redis_health.ok},
            "pools": self.pool_snapshots(now),
            "partitions": self.partitions.snapshot(),
            "handlers": self.handlers.snapshot(),
        }

    def fleet_record(self) -> dict[str, Any]:
        """What the fleet sees of this master: ``status``, plus when it started (wall clock)."""
        st = self.status()
        st["master"].update(version=__version__, started=round(time.time() - st["master"]["uptime"], 3))
        return st

    def metrics_state(self) -> dict[str, Any]:
        """What ``/metrics`` reads besides its counters."""
        now = time.monotonic()
        return {"queues": {name: self.housekeeper.stats(name, now) for name in self.pools},
                "global_concurrency": {p.name: p.config.global_concurrency for p in self.pools.values()
                                       if p.config.global_concurrency},
                "pools": self.pool_snapshots(now),
                "handlers": self.handlers.snapshot(),
                "partitions": self.partitions.snapshot(),
                "fleet": {"masters": self.registry.masters, "last_beat": self.registry.last_beat},
                "redis_ok": self.redis_health.ok}

    def serve_metrics(self) -> tuple[int, str, bytes]:
        """``/metrics``."""
        self.reports.scan(self.pools, time.monotonic())  # counters as of now
        return 200, CONTENT_TYPE, self.metrics.render()

    def pool_snapshots(self, now: float) -> list[dict[str, Any]]:
        return [{**p.snapshot(now), "autoscale": self.scaler.snapshot(p)} for p in self.pools.values()]

    def summary(self) -> str:
        """One line for systemd's STATUS=: workers, throughput, backlog."""
        now = time.monotonic()
        workers = sum(len(p.taking_work()) for p in self.pools.values())
        busy = sum(1 for p in self.pools.values() for w in p if w.job)
        rate = self.health.rate(now)
        waiting = self.housekeeper.waiting()
        backing_off = [p.name for p in self.pools.values() if p.backoff]
        line = f"{workers} workers ({busy} busy), {rate:.1f} jobs/s, {waiting} waiting"
        return line + (f", backing off: {', '.join(backing_off)}" if backing_off else "")
