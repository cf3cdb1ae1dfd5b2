"""Adaptive timeouts: each handler's hard limit learnt from its own successful runs, fleet-wide.

Workers keep the run time of every successful run in Redis (ack.lua, in the same script
call as the settle: no round trip of its own), per queue lane and handler, the last
``runtimes_kept`` of them. Every ADAPTIVE_EVERY the master runs adaptive.lua over the
lanes it ticks: once ``samples`` runs are known the handler's hard limit is
``clamp(p<percentile> * factor, min, max)``, written to the lane's ``adaptive`` hash, which
workers read (at most every ADAPTIVE_REFRESH, while they run jobs). A job's own timeout
still wins; the soft limit keeps its ratio to the hard one.

The traps, after Finagle's latency-based backup requests: a run killed at an adaptive limit
is a *censored* sample (it needed at least that long), kept at its limit, so kills raise the
percentile and a limit cannot ratchet itself down; a handler with ``max_kills`` adaptive
kills within ``window`` falls back to the configured limit until they age out (status and
the log say so); failed runs are never samples, and each handler has its own.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import redis

from governor.config import AdaptiveTimeout
from governor.log import fields
from governor.protocol.queue import QueueKeys, run
from governor.supervise.pool import Pool

log = logging.getLogger("governor.master")

ADAPTIVE_EVERY = 5.0  # seconds between the master's passes over the samples
ADAPTIVE_REFRESH = 5.0  # seconds a worker goes on with the learnt limits it last read
KEEP_AT_LEAST = 1000  # run times kept per lane and handler (more if `samples` asks)


def runtimes_kept(adaptive: AdaptiveTimeout) -> int:
    return max(adaptive.samples, KEEP_AT_LEAST)


@dataclass(frozen=True)
class HandlerTimes:
    """What the last pass learnt of one handler (the lane with the most samples)."""

    samples: int
    p50: float  # seconds
    p95: float
    p99: float
    limit: float | None  # the learnt hard limit; None: the configured one applies
    configured: float | None
    kills: int  # adaptive kills within the window
    fallback: bool  # too many of them: back on the configured limit

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class AdaptiveLimits:
    """Called by the master's loop every pass; talks to Redis every ADAPTIVE_EVERY at most."""

    def __init__(self, client: redis.Redis, keys: Callable[[str, int | None], QueueKeys]) -> None:
        self.redis = client
        self.keys = keys
        self.next_run = 0.0
        self.learnt: dict[str, dict[str, HandlerTimes]] = {}  # queue -> handler -> figures

    def run(self, now: float, pools: Mapping[str, Pool], lanes: Mapping[str, list[int | None]]) -> None:
        if now < self.next_run:
            return
        learning = {name: p.config.settings.timeout for name, p in pools.items()
                    if p.config.settings.timeout.adaptive and not p.removed}
        self.learnt = {q: h for q, h in self.learnt.items() if q in learning}
        if not learning:
            self.next_run = math.inf
            return
        self.next_run = now + ADAPTIVE_EVERY
        where = [(name, part) for name in learning for part in lanes.get(name, [None])]
        pipe = self.redis.pipeline(transaction=False)
        for name, part in where:
            pipe.smembers(self.keys(name, part).adaptive_handlers)
        calls, asked = [], []
        for (name, part), members in zip(where, pipe.execute(), strict=True):
            handlers = sorted(m.decode(errors="replace") for m in members)
            a = learning[name].adaptive
            if handlers and a:
                calls.append(self.keys(name, part).learn(handlers, a.percentile, a.factor, int(a.min * 1000),
                                                         int(a.max * 1000), a.samples, a.max_kills,
                                                         int(a.window * 1000)))
                asked.append((name, handlers))
        learnt: dict[str, dict[str, HandlerTimes]] = {}
        for (name, handlers), reply in zip(asked, run(self.redis, *calls) if calls else [], strict=True):
            for handler, row in zip(handlers, reply, strict=True):
                n, p50, p95, p99, _, limit, kills, fallback = (int(x) for x in row)
                best = learnt.setdefault(name, {}).get(handler)
                if best is None or n > best.samples:
                    learnt[name][handler] = HandlerTimes(n, p50 / 1000, p95 / 1000, p99 / 1000,
                                                         limit / 1000 if limit else None,
                                                         learning[name].hard, kills, bool(fallback))
        for name, handlers in learnt.items():
            for handler, t in handlers.items():
                self._say(name, handler, self.learnt.get(name, {}).get(handler), t)
        self.learnt = learnt

    def forget(self) -> None:
        """A reload: look again at once, under the new settings."""
        self.next_run = 0.0

    @staticmethod
    def _say(queue: str, handler: str, before: HandlerTimes | None, now: HandlerTimes) -> None:
        """Logs a handler's limit when it is first learnt, and every fall back and return."""
        if now.fallback and not (before and before.fallback):
            log.warning("queue %s: handler %s had %d runs killed at its adaptive limit within the window: "
                        "back on the configured limit (%ss)", queue, handler, now.kills, now.configured,
                        extra=fields(queue=queue, reason="adaptive_fallback"))
        elif before and before.fallback and not now.fallback:
            log.info("queue %s: handler %s back on its adaptive limit", queue, handler,
                     extra=fields(queue=queue, reason="adaptive_fallback"))
        elif now.limit and not (before and before.limit):
            log.info("queue %s: handler %s learnt a hard limit of %.3fs from %d runs (p50 %.3fs, p95 %.3fs, "
                     "p99 %.3fs)", queue, handler, now.limit, now.samples, now.p50, now.p95, now.p99,
                     extra=fields(queue=queue, reason="adaptive_limit"))

    def next_wakeup(self) -> float:
        return self.next_run

    def snapshot(self) -> dict[str, dict[str, dict[str, Any]]]:
        return {q: {h: t.as_dict() for h, t in handlers.items()} for q, handlers in self.learnt.items()}
