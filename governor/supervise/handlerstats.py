"""Per handler: how its runs ended and how long they took, fleet-wide; and the hard limits
learnt from them (adaptive timeouts).

Workers count every run in Redis in the script call that settles it, per queue lane and
handler (ack.lua: done, and the run time among the handler's last ``runtimes_kept``;
fail.lua: failed, dead, and each failure's reason: exception, timeout_hard, memory_hard,
crashed ...): no round trip of their own. Every STATS_EVERY, for each queue whose figures
moved (or every STATS_IDLE), the master runs handlers.lua over the lanes it ticks: p50, p95
and p99 per handler, and, where ``timeout.adaptive`` is set, once ``samples`` runs are known,
the hard limit ``clamp(p<percentile> * factor, min, max)`` written to the lane's ``adaptive``
hash, which workers read (at most every ADAPTIVE_REFRESH, while they run jobs). A job's own
timeout still wins; the soft limit keeps its ratio to the hard one.

The traps, after Finagle's latency-based backup requests: a run killed at an adaptive limit
is a *censored* sample (it needed at least that long), kept at its limit, so kills raise the
percentile and a limit cannot ratchet itself down; a handler with ``max_kills`` adaptive
kills within ``window`` falls back to the configured limit until they age out (status and
the log say so); failed runs are never samples, and each handler has its own.

Runs in: master (workers read the limits it learns, in jobrun.py).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from governor.config import AdaptiveTimeout, TimeoutLimits
from governor.log import fields
from governor.protocol.queue import QueueKeys, run
from governor.supervise.pool import Pool

log = logging.getLogger("governor.master")

STATS_EVERY = 5.0  # seconds between the master's passes over a queue whose figures moved
STATS_IDLE = 60.0  # ... and over one whose did not (another host's runs)
ADAPTIVE_REFRESH = 5.0  # seconds a worker goes on with the learnt limits it last read
KEEP_AT_LEAST = 1000  # run times kept per lane and handler (more if `samples` asks)


def runtimes_kept(adaptive: AdaptiveTimeout | None) -> int:
    return max(adaptive.samples, KEEP_AT_LEAST) if adaptive else KEEP_AT_LEAST


@dataclass(frozen=True)
class HandlerFigures:
    """One handler of one queue: its counts over every lane this master ticks, its run times
    and learnt limit from the lane with the most samples."""

    done: int
    failed: int
    dead: int
    reasons: dict[str, int]  # failures by reason (exception, timeout_hard, memory_hard, crashed, ...)
    samples: int  # the last successful runs the percentiles are of
    p50: float  # seconds
    p95: float
    p99: float
    limit: float | None  # the learnt hard limit; None: the configured one applies
    configured: float | None
    adaptive: bool
    kills: int = 0  # adaptive kills within the window
    fallback: bool = False  # too many of them: back on the configured limit

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Counts:
    done: int = 0
    failed: int = 0
    dead: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


def _counts(raw: Mapping[bytes, bytes]) -> dict[str, _Counts]:
    out: dict[str, _Counts] = {}
    for k, v in raw.items():
        handler, _, what = k.decode(errors="replace").rpartition("|")
        if not handler or not v.isdigit():
            continue
        c = out.setdefault(handler, _Counts())
        if what in ("done", "failed", "dead"):
            setattr(c, what, getattr(c, what) + int(v))
        elif what != "adaptive_kills":
            c.reasons[what] = c.reasons.get(what, 0) + int(v)
    return out


class HandlerStats:
    """Called by the master's loop every pass; talks to Redis every STATS_EVERY at most."""

    def __init__(self, client: redis.Redis, keys: Callable[[str, int | None], QueueKeys]) -> None:
        self.redis = client
        self.keys = keys
        self.next_run = 0.0
        self.figures: dict[str, dict[str, HandlerFigures]] = {}  # queue -> handler -> figures
        self._looked: dict[str, tuple[Any, float]] = {}  # queue -> (its figures then, when)

    def run(self, now: float, pools: Mapping[str, Pool], lanes: Mapping[str, list[int | None]],
            moved: Callable[[str], Any]) -> None:
        """``moved(queue)``: the queue's figures from the housekeeper's last tick; a queue whose
        figures did not change since the last pass is looked at only every STATS_IDLE."""
        if now < self.next_run:
            return
        self.next_run = now + STATS_EVERY
        due = {}
        for name, pool in pools.items():
            if pool.removed:
                continue
            mark, at = self._looked.get(name, (None, -math.inf))
            if moved(name) != mark or now - at >= STATS_IDLE:
                due[name] = pool.config.settings.timeout
                self._looked[name] = (moved(name), now)
        self.figures = {q: f for q, f in self.figures.items() if q in pools}
        self._looked = {q: m for q, m in self._looked.items() if q in pools}
        if not due:
            return
        where = [(name, part) for name in due for part in lanes.get(name, [None])]
        pipe = self.redis.pipeline(transaction=False)
        for name, part in where:
            pipe.hgetall(self.keys(name, part).handler_counts)
        counted = pipe.execute()
        calls, asked = [], []
        for (name, part), raw in zip(where, counted, strict=True):
            counts = _counts(raw)
            if counts:
                calls.append(self._learn(self.keys(name, part), sorted(counts), due[name]))
                asked.append((name, counts))
        replies = run(self.redis, *calls) if calls else []
        fresh: dict[str, dict[str, HandlerFigures]] = {name: {} for name in due}
        totals: dict[tuple[str, str], _Counts] = {}
        for (name, counts), reply in zip(asked, replies, strict=True):
            for (handler, c), row in zip(sorted(counts.items()), reply, strict=True):
                t = totals.setdefault((name, handler), _Counts())
                t.done, t.failed, t.dead = t.done + c.done, t.failed + c.failed, t.dead + c.dead
                for r, n in c.reasons.items():
                    t.reasons[r] = t.reasons.get(r, 0) + n
                n, p50, p95, p99, _, limit, kills, fallback = (int(x) for x in row)
                best = fresh[name].get(handler)
                if best is None or n > best.samples:
                    tl = due[name]
                    fresh[name][handler] = HandlerFigures(
                        0, 0, 0, {}, n, p50 / 1000, p95 / 1000, p99 / 1000, limit / 1000 if limit else None,
                        tl.hard, tl.adaptive is not None, kills, bool(fallback))
        for (name, handler), t in totals.items():
            f = fresh[name][handler]
            fresh[name][handler] = HandlerFigures(t.done, t.failed, t.dead, t.reasons, f.samples, f.p50, f.p95,
                                                  f.p99, f.limit, f.configured, f.adaptive, f.kills, f.fallback)
            if f.adaptive:
                self._say(name, handler, self.figures.get(name, {}).get(handler), fresh[name][handler])
        self.figures.update(fresh)

    @staticmethod
    def _learn(keys: QueueKeys, handlers: list[str], timeout: TimeoutLimits) -> Any:
        a = timeout.adaptive
        if a is None:  # percentiles only
            return keys.learn(handlers, 95, 1, 0, 0, 0, 1, 1)
        return keys.learn(handlers, a.percentile, a.factor, int(a.min * 1000), int(a.max * 1000), a.samples,
                          a.max_kills, int(a.window * 1000))

    def configure(self, config: Any) -> None:
        """A reload (``config``: the new Config; the pools carry its queues)."""
        self.forget()

    def forget(self) -> None:
        """A reload: look again at once, under the new settings."""
        self.next_run = 0.0
        self._looked.clear()

    @staticmethod
    def _say(queue: str, handler: str, before: HandlerFigures | None, now: HandlerFigures) -> None:
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
        return {q: {h: f.as_dict() for h, f in handlers.items()} for q, handlers in self.figures.items()}
