"""Whether the master's Redis is up, shared by every duty that talks to it (master process).

One outage is one outage, whoever met it: the housekeeper's passes, the partition
leases, the fleet registry, the handler figures and the master's own calls all
report to the one ``RedisHealth``, which logs it once when it starts and once
when it ends, and, while Redis is away, asks a short "is it back?" at most once
per ``PROBE_EVERY`` instead of letting every duty sit in a full timeout on every
pass of the loop that enforces the hard limits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from governor.protocol.connection import connect, disconnect, is_cluster, is_transient

log = logging.getLogger("governor.master")

PROBE_EVERY = 1.0  # seconds between "is Redis back?" probes while it is away
MASTER_REDIS_TIMEOUT = 1.0  # seconds; a healthy Redis answers the master's calls in milliseconds
PROBE_TIMEOUT = 0.2  # seconds; "is Redis back?" asked while it is away, once a second
# What a call to Redis can raise besides RedisError when the connection carries garbage
# (a reply that is not the one asked for: wrong type, wrong length).
REPLY_ERRORS = (TypeError, ValueError, IndexError, KeyError, AttributeError)


class RedisHealth:
    """The master's view of its Redis: up or down since when, the last call that worked, and the
    probe that ends an outage."""

    def __init__(self, client: redis.Redis, probe: redis.Redis | None = None,
                 on_error: Callable[[], None] = lambda: None) -> None:
        self.client = client  # the master's connection: dropped when a reply shows it out of step
        # A client with short timeouts for asking "is Redis back?" while it is away: the loop
        # that enforces hard limits must not sit in a 1 s timeout on every pass of an outage.
        self.probe = probe or client
        self.on_error = on_error
        self.next_probe = 0.0
        self.down_since: float | None = None
        self.last_ok = 0.0  # monotonic time of the last Redis call that succeeded

    @classmethod
    def connect(cls, url: str, tls: Any, on_error: Callable[[], None] = lambda: None) -> RedisHealth:
        """The master's two connections, both with short timeouts: every Redis call blocks the
        loop that enforces hard time limits (``redis``), and the probe asks only "is it back?"."""
        client = connect(url, socket_timeout=MASTER_REDIS_TIMEOUT, name="governor-master", tls=tls,
                         socket_connect_timeout=MASTER_REDIS_TIMEOUT)
        probe = connect(url, socket_timeout=PROBE_TIMEOUT, name="governor-master-probe", tls=tls,
                        socket_connect_timeout=PROBE_TIMEOUT)
        for c, window in ((client, MASTER_REDIS_TIMEOUT), (probe, PROBE_TIMEOUT)):
            if is_cluster(c):  # ride out a failover in the housekeeper's passes, not in one call
                c.failover_window = window
        return cls(client, probe, on_error=on_error)

    @property
    def redis(self) -> redis.Redis:
        """The master's connection (the one every duty uses)."""
        return self.client

    @property
    def ok(self) -> bool:
        """Not known to be down: the duties that talk to Redis run."""
        return self.down_since is None

    def succeeded(self) -> None:
        """A call went through: Redis is up (and an outage, if there was one, is over)."""
        self.last_ok = time.monotonic()
        if self.down_since is not None:
            log.warning("Redis is reachable again after %.1fs", time.monotonic() - self.down_since)
            self.down_since = None

    def failed(self, exc: Exception) -> None:
        """A call made on the master's behalf failed: counted, and an outage starts if none had."""
        if isinstance(exc, REPLY_ERRORS) or not is_transient(exc):
            # An unexpected reply means the connection may be out of step (a reply left over
            # from something else): never read another reply from it, start a new one.
            disconnect(self.client)
        self.on_error()
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.error("Redis unavailable (%s); retrying", exc)

    def reachable(self, now: float) -> bool:
        """While Redis is known to be away: one short probe per PROBE_EVERY, no real call."""
        if self.down_since is None:
            return True
        if now < self.next_probe:
            return False
        self.next_probe = now + PROBE_EVERY
        try:
            self.probe.ping()
            return True
        except (redis.RedisError, *REPLY_ERRORS) as exc:
            self.failed(exc)
            return False

    def next_probe_at(self, now: float) -> float:
        """While Redis is away: when the next probe is due (not before ``now``)."""
        return max(self.next_probe, now)

    def check(self) -> None:
        """A direct PING, for /healthz when the last pass is too old to vouch for Redis
        (not while Redis is known to be down: the passes are already retrying)."""
        if self.down_since is not None:
            return
        try:
            self.probe.ping()
            self.succeeded()
        except (redis.RedisError, *REPLY_ERRORS) as exc:
            self.failed(exc)
