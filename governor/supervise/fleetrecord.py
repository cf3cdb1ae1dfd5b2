"""This master's place in the fleet registry: its record in Redis, refreshed on its own clock.

Every HEARTBEAT (at most; sooner with a short lease) the master writes what ``governor
status`` shows of it (host, pid, version, config, pools, workers and their jobs,
partitions held) with an expiry of one ``lease``; a master that stops beating drops out
after that, removed by the next one that beats or reads. ``governor status`` from any
machine reads the whole fleet from there.

Runs in: master.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from governor.protocol.fleet import FleetKeys
from governor.protocol.queue import run

HEARTBEAT = 10.0  # seconds between heartbeats at most (a quarter of the lease when that is shorter)
REFRESH = 30.0  # seconds a record may go unwritten while what it shows (pools, workers, jobs) holds


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
        self._written: tuple[Any, float] = (None, -math.inf)  # (the shape last written, when)

    @property
    def interval(self) -> float:
        return min(HEARTBEAT, max(self.lease / 4, 0.25))

    def run(self, now: float) -> None:
        """Beats if due. Raises what Redis raises: the caller counts outages."""
        if now < self.next_beat:
            return
        self.next_beat = now + self.interval
        record = self.record()
        shape = _shape(record)
        # an idle master's record does not change but for its clocks and memory: a beat then
        # only extends the expiry (the full record again every REFRESH)
        full = shape != self._written[0] or now - self._written[1] >= REFRESH
        lease_ms = int(self.lease * 1000)
        masters = int(run(self.redis, self.keys.beat(self.master, lease_ms, record if full else None))[0])
        if masters < 0:  # our record is gone (Redis restarted, or we were away a lease): whole
            full = True
            masters = int(run(self.redis, self.keys.beat(self.master, lease_ms, record))[0])
        self.masters = masters
        if full:
            self._written = (shape, now)
        self.last_beat = time.time()

    def configure(self, config: Any) -> None:
        """A reload (``config``: the new Config): beats under its lease, and writes the whole
        record at the next beat (what an operator reads may have changed)."""
        self.lease = config.lease
        self.changed()

    def changed(self) -> None:
        """Something an operator reads changed (a reload): the next beat writes the record."""
        self._written = (None, -math.inf)

    def leave(self) -> None:
        """Stopping: out of the fleet now, not a lease later."""
        run(self.redis, self.keys.leave(self.master))
        self.next_beat = math.inf

    def next_wakeup(self) -> float:
        return self.next_beat


def _shape(record: dict[str, Any]) -> Any:
    """What a record shows that a beat must not leave stale: pools, workers, their jobs."""
    return tuple((p.get("queue"), p.get("desired"), p.get("actual"),
                  tuple((w.get("pid"), w.get("state"), (w.get("job") or {}).get("id")) for w in p.get("workers", [])))
                 for p in record.get("pools", []))
