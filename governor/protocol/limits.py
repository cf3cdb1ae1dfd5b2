"""Fleet-wide rate limits and concurrency, as the Redis scripts see them.

A limit only holds across hosts if it lives in Redis: each one is a key of its
own, checked and counted in the same script that pops the job (reserve.lua)
or, for a handler's ``governor.limit(name)``, in limit.lua, on Redis server
time. This module turns the YAML (``RateLimit`` in config.py) into those keys
and arguments, and gives handlers ``limit()`` and ``RateLimited``.

Keys: a queue's own limits live under its hash tag
(``{prefix:queue}:rate:<algorithm>:<per_ms>``), so they share its Cluster slot; a named
limiter's under ``{prefix/limiter/<name>}`` (names.py: no queue's keys can be there).

What a limit's state means decides its key. It is the starts counted so far (a sliding
window's times, a fixed window's count per aligned window, a token bucket's next start time),
which stay true whatever the ``limit`` is: so the key never holds the limit, and a reload that
raises 3 to 4 an hour still sees the 3 starts of this hour (it used to start afresh: 7 in the
hour). The algorithm and ``per`` are in the key: another algorithm's state, or windows of
another length, mean nothing to the new one, which starts afresh. A second limit of the same
algorithm and ``per`` in one list (two token buckets with other bursts) gets ``:2``, and so on.
Keys of older versions (``rate:<i>:<algorithm>:<limit>/<per_ms>``, and named limiters under
``{prefix:limiter:<name>}``) are not read: while masters of both versions share a Redis in a
rolling upgrade, each version counts its own starts, as every change of a limit did before.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from governor.names import internal_tag
from governor.protocol.scripts import Call, run

GRACE_MAX_MS = 10  # how far from its time a reserved start may really happen (a wake-up, a round trip)
GRACE_MIN_MS = 3


class RateLimited(Exception):  # noqa: N818 - the name the design gives handlers
    """Raised by ``governor.limit(name)`` when the limiter has no start to give now. A handler
    that lets it propagate has its job put back, delayed by ``retry_after`` seconds, and the
    attempt is not counted."""

    def __init__(self, name: str, retry_after: float) -> None:
        super().__init__(f"limiter {name!r}: no start allowed for {retry_after:.3f}s")
        self.name = name
        self.retry_after = retry_after


@dataclass(frozen=True)
class Limit:
    key: str
    algorithm: str
    limit: int
    per_ms: int
    burst: int


@dataclass(frozen=True)
class Rules:
    """What a queue's reserve must check: its fleet-wide concurrency and every rate limit."""

    global_concurrency: int = 0  # 0: none
    limits: tuple[Limit, ...] = ()

    @property
    def grace_ms(self) -> int:
        # a hundredth of the shortest window, 3 to 10 ms (a round trip and a sleep's overshoot):
        # counted twice (lua/lib/limits.lua), it costs 2% of the throughput for windows of a second or more
        return min([GRACE_MAX_MS, *(max(GRACE_MIN_MS, lim.per_ms // 100) for lim in self.limits)])

    def argv(self) -> list[Any]:
        out: list[Any] = [self.global_concurrency, self.grace_ms, len(self.limits)]
        for lim in self.limits:
            out += [lim.algorithm, lim.limit, lim.per_ms, lim.burst]
        return out

    def keys(self) -> list[str]:
        return [lim.key for lim in self.limits]


def _limits(tag: str, specs: Sequence[Any]) -> list[Limit]:
    """``tag``: the hash tag, braces included. The key of each limit holds what its state means
    (see the module's docstring), never its ``limit``."""
    out = []
    seen: dict[tuple[str, int], int] = {}
    for rl in specs:
        per_ms = max(1, round(rl.per * 1000))
        n = seen[(rl.algorithm, per_ms)] = seen.get((rl.algorithm, per_ms), 0) + 1
        key = f"{tag}:rate:{rl.algorithm}:{per_ms}" + (f":{n}" if n > 1 else "")
        out.append(Limit(key, rl.algorithm, rl.limit, per_ms, rl.burst))
    return out


def limiter_limits(prefix: str, name: str, specs: Sequence[Any]) -> list[Limit]:
    return _limits(internal_tag(prefix, "limiter", name), specs)


def rules_for(prefix: str, queue: Any, limiters: Mapping[str, Sequence[Any]]) -> Rules:
    """A queue's rules from its config: its own ``rate_limit``s, the named ``limiters`` it
    counts against, and ``global_concurrency``."""
    limits = _limits(f"{{{prefix}:{queue.name}}}", getattr(queue, "rate_limits", ()))
    for name in getattr(queue, "limiters", ()):
        limits += limiter_limits(prefix, name, limiters[name])
    return Rules(global_concurrency=getattr(queue, "global_concurrency", None) or 0, limits=tuple(limits))


# -- governor.limit(), for handlers ---------------------------------------------------------------

_binding: tuple[Any, str, Mapping[str, Sequence[Any]]] | None = None  # (redis, prefix, limiters)


def bind(client: Any, prefix: str, limiters: Mapping[str, Sequence[Any]]) -> None:
    """Set by the worker at start: which Redis and which named limiters ``limit()`` uses."""
    global _binding
    _binding = (client, prefix, limiters)


def limit(name: str) -> None:
    """Takes one start from the named limiter (``limiters:`` in the YAML), fleet-wide, or raises
    ``RateLimited(retry_after)``. Call it right before the rate-limited call (an API request)."""
    if _binding is None:
        raise RuntimeError("governor.limit() works inside a handler run by a governor worker")
    client, prefix, limiters = _binding
    if name not in limiters:
        known = ", ".join(sorted(limiters)) or "none"
        raise ValueError(f"no limiter {name!r} in the config's limiters (known: {known})")
    limits = limiter_limits(prefix, name, limiters[name])
    args: list[Any] = [len(limits)]
    for lim in limits:
        args += [lim.algorithm, lim.limit, lim.per_ms, lim.burst]
    args.append(secrets.token_hex(8))
    wait_ms = int(run(client, Call("limit", [lim.key for lim in limits], args))[0])
    if wait_ms > 0:
        raise RateLimited(name, wait_ms / 1000.0)



def usage(client: Any, rules: Rules) -> list[dict[str, Any]]:
    """What each limit has left right now, on Redis time, for `governor status`: a token
    bucket's available starts (``tokens``, at most its burst), a window's starts counted so
    far (``used``). Starts reserved for throttled workers count: they are promised."""
    if not rules.limits:
        return []
    pipe = client.pipeline(transaction=False)
    pipe.time()
    for lim in rules.limits:
        if lim.algorithm == "token_bucket":
            pipe.get(lim.key)
        elif lim.algorithm == "fixed_window":
            pipe.hgetall(lim.key)
        else:
            pipe.zrange(lim.key, 0, -1, withscores=True)
    (seconds, micros), *replies = pipe.execute()
    now = seconds * 1000 + micros // 1000
    out = []
    for lim, reply in zip(rules.limits, replies, strict=True):
        entry: dict[str, Any] = {"algorithm": lim.algorithm, "limit": lim.limit, "per": lim.per_ms / 1000.0}
        if lim.algorithm == "token_bucket":
            interval = lim.per_ms / lim.limit
            behind = float(reply or 0) - now  # how far the next start's time is ahead of now
            entry["burst"] = lim.burst
            entry["tokens"] = int(max(0.0, min(lim.burst, lim.burst - behind // interval)))
        elif lim.algorithm == "fixed_window":
            entry["used"] = int(reply.get(str(now // lim.per_ms).encode(), 0))
        else:
            entry["used"] = sum(1 for _, score in reply if now - lim.per_ms < score)
        out.append(entry)
    return out
