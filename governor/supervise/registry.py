"""This master's place in the fleet registry: its record in Redis, refreshed on its own clock.

Every HEARTBEAT (at most; sooner with a short lease) the master writes what ``governor
status`` shows of it (host, pid, version, config, pools, workers and their jobs,
partitions held) with an expiry of one ``lease``; a master that stops beating drops out
after that, removed by the next one that beats or reads. ``governor status`` from any
machine reads the whole fleet from there."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from governor.protocol.fleet import FleetKeys
from governor.protocol.queue import run

HEARTBEAT = 5.0  # seconds between heartbeats at most (a quarter of the lease when that is shorter)


class FleetRegistry:
    def __init__(self, client: Any, prefix: str, master: str, lease: float,
                 record: Callable[[], dict[str, Any]]) -> None:
        self.redis = client
        self.keys = FleetKeys(prefix)
        self.master = master
        self.lease = lease
        self.record = record
        self.next_beat = 0.0
        self.masters = 0  # alive in the fleet, as of our last heartbeat
        self.last_beat: float | None = None  # wall clock of the last heartbeat Redis took

    @property
    def interval(self) -> float:
        return min(HEARTBEAT, max(self.lease / 4, 0.25))

    def run(self, now: float) -> None:
        """Beats if due. Raises what Redis raises: the caller counts outages."""
        if now < self.next_beat:
            return
        self.next_beat = now + self.interval
        self.masters = int(run(self.redis, self.keys.beat(self.master, int(self.lease * 1000), self.record()))[0])
        self.last_beat = time.time()

    def leave(self) -> None:
        """Stopping: out of the fleet now, not a lease later."""
        run(self.redis, self.keys.leave(self.master))
        self.next_beat = math.inf

    def next_wakeup(self) -> float:
        return self.next_beat
