"""Elastic pools: the scaling policy moves a pool's *desired* size; the reconcile loop does
the rest, as resque-pool's does for a fixed one.

Per pass, for each elastic pool, from what the master already knows (no Redis call of its
own: the queue's figures come from the housekeeper's last tick, fleet-wide; idle times from
the scoreboard; the host from psutil):

- **up** when the oldest waiting job has waited over ``up_wait``, or more than ``up_depth``
  jobs wait per worker; at most one step per ``up_cooldown``, and the steps double (1, 2,
  4 ...) while the overload lasts from one step to the next, never past ``max``. Only once
  the last step's workers are all started, and on figures read after it (so a step is never
  taken twice on the same backlog). A host guard (``host.min_available_memory``,
  ``host.max_cpu``) holds a step up, and says so in status. So does the queue when its
  waiting jobs cannot start however many workers wait for them (``_queue_holds``): paused,
  at its ``global_concurrency`` fleet-wide, or throttled by a rate limit; then the pool
  is not overloaded, and may shrink by the idle rule.
- **down** by one, when a worker has been idle ``down_idle`` and nothing is overloaded, at
  most one step per ``down_cooldown`` (counted from the last step either way), never below
  ``min``. The worker retired is the longest idle (``Pool.excess``): no job is interrupted.

Every change is logged with the figures behind it, kept (the last HISTORY per pool) for
``status``, and counted in ``governor_scale_decisions_total``.

Runs in: master.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psutil

from governor.config import Autoscale, HostGuards
from governor.log import fields
from governor.supervise.pool import Pool
from governor.supervise.process import State
from governor.units import format_size

log = logging.getLogger("governor.master")

HISTORY = 20  # decisions kept per pool for status
CPU_WINDOW = 10.0  # seconds of host CPU that host.max_cpu is judged on
CPU_SAMPLE = 1.0  # seconds between the host CPU readings that window is made of
THROTTLE_WINDOW = 2.0  # seconds (at least) a rate limit's refusal holds steps up


class Held(str, enum.Enum):
    """Why a step up that the queue asks for is not taken."""

    NO = ""
    MEMORY = "host memory"
    CPU = "host cpu"
    PAUSED = "paused"
    GLOBAL_CONCURRENCY = "global_concurrency"
    RATE_LIMIT = "rate limit"


@dataclass
class Decision:
    at: float  # wall clock, for people
    direction: str  # up | down
    before: int
    after: int
    reason: str  # oldest_wait | depth | idle
    signals: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"at": round(self.at, 3), "direction": self.direction, "from": self.before, "to": self.after,
                "reason": self.reason, "signals": self.signals}


@dataclass
class Elastic:
    """One elastic pool's scaling state (the pool owns its desired size, ``Pool.target``)."""

    last_step: float = -math.inf  # monotonic, either direction
    last_up: float = -math.inf
    streak: int = 0  # steps up in a row: the next is 2**streak
    held: Held = Held.NO
    history: deque[Decision] = field(default_factory=lambda: deque(maxlen=HISTORY))
    throttled: tuple[float, int] | None = None  # (figures' time, reserves throttled so far) last seen
    throttled_rose: float = -math.inf  # figures' time when that count was last seen rising


class HostGuard:
    """Host memory and CPU as psutil reads them; CPU busy over the last CPU_WINDOW seconds,
    from readings taken as the autoscaler runs (no thread, no timer of its own)."""

    def __init__(self) -> None:
        self._cpu: deque[tuple[float, float, float]] = deque()  # (monotonic, busy s, total s)

    def sample(self, now: float) -> None:
        if self._cpu and now - self._cpu[-1][0] < CPU_SAMPLE:
            return
        t = psutil.cpu_times()
        total = sum(t)
        self._cpu.append((now, total - t.idle - getattr(t, "iowait", 0.0), total))
        while len(self._cpu) > 2 and now - self._cpu[1][0] >= CPU_WINDOW:
            self._cpu.popleft()

    def next_sample(self) -> float:
        return self._cpu[-1][0] + CPU_SAMPLE if self._cpu else 0.0

    def cpu_percent(self) -> float | None:
        """% of all cores busy from the oldest reading kept to the newest (None: one reading)."""
        if len(self._cpu) < 2:
            return None
        (_, b0, t0), (_, b1, t1) = self._cpu[0], self._cpu[-1]
        return 100.0 * (b1 - b0) / (t1 - t0) if t1 > t0 else None

    @staticmethod
    def available_memory() -> int:
        return int(psutil.virtual_memory().available)

    def refuses(self, guards: HostGuards) -> tuple[Held, dict[str, Any]]:
        """Whether a step up must wait, and the readings that say so."""
        if guards.min_available_memory is not None:
            free = self.available_memory()
            if free < guards.min_available_memory:
                return Held.MEMORY, {"available_memory": free, "min_available_memory": guards.min_available_memory}
        if guards.max_cpu is not None:
            busy = self.cpu_percent()
            if busy is not None and busy > guards.max_cpu:
                return Held.CPU, {"cpu_percent": round(busy, 1), "max_cpu": guards.max_cpu}
        return Held.NO, {}


class Autoscaler:
    """Called by the master's loop every pass; changes only ``Pool.target``."""

    def __init__(self, guards: HostGuards, on_decision: Callable[[str, str, str], None] = lambda *a: None,
                 host: HostGuard | None = None) -> None:
        self.guards = guards
        self.host = host or HostGuard()
        self.on_decision = on_decision  # (queue, direction, reason): the metrics counter
        self.state: dict[str, Elastic] = {}

    def configure(self, config: Any) -> None:
        """A reload (``config``: the new Config): its host guards hold from the next pass."""
        self.guards = config.host

    def run(self, now: float, pools: Mapping[str, Pool], stats: Callable[[str, float], dict[str, Any]],
            stopping: bool = False) -> None:
        elastic = {name: p for name, p in pools.items() if p.config.autoscale and not p.removed}
        for name in [n for n in self.state if n not in elastic]:
            del self.state[name]  # no longer elastic (or gone): a later return starts afresh
        if not elastic or stopping:
            return
        if self.guards.max_cpu is not None:
            self.host.sample(now)
        for name, pool in elastic.items():
            self._decide(pool, self.state.setdefault(name, Elastic()), now, stats(name, now))

    def _decide(self, pool: Pool, st: Elastic, now: float, queue: dict[str, Any]) -> None:
        scale = pool.config.autoscale
        assert scale is not None
        if not queue or pool.backoff:
            return  # no figures yet; or its workers crash: more of them would not help
        workers = pool.current()
        target = pool.target
        waiting = int(queue.get("waiting", 0))
        oldest = queue.get("oldest_age") or 0.0
        # per worker of the fleet: every host sees the whole backlog, and each scaling on it
        # divided by its own workers alone would grow the fleet N times too much (the queue's
        # running jobs count every host's busy workers)
        # (a worker with jobs_per_worker slots counts as that many: the depth is per slot)
        slots = pool.config.settings.jobs_per_worker
        per_worker = waiting / max(1, len(workers) * slots, int(queue.get("active", 0)))
        reason = ""
        if scale.up_wait is not None and oldest > scale.up_wait:
            reason = "oldest_wait"
        elif scale.up_depth is not None and per_worker > scale.up_depth:
            reason = "depth"
        signals = {"oldest_wait": round(oldest, 3), "waiting": waiting, "workers": len(workers),
                   "per_worker": round(per_worker, 2)}
        blocked, ceiling, readings = self._queue_holds(pool, st, workers, queue)
        if reason and not blocked:
            self._up(pool, st, scale, now, queue, reason, signals, ceiling)
            return
        if reason:  # the backlog waits for what more workers cannot give: not an overload
            self._hold(pool, st, blocked, {**signals, **readings})
        elif st.held:
            self._hold(pool, st, Held.NO, {})
        if now - st.last_up > scale.up_cooldown:
            st.streak = 0  # the overload is over: the next one starts again with one step
        idle = [w for w in workers if w.state is State.IDLE and now - w.idle_since >= scale.down_idle]
        if (target > scale.min and idle and now - st.last_step >= scale.down_cooldown
                and not any(w.state is State.STARTING for w in workers)):
            signals["idle"] = len(idle)
            signals["idle_for"] = round(now - min(w.idle_since for w in idle), 3)
            self._step(pool, st, now, "down", target - 1, "idle", signals)

    def _queue_holds(self, pool: Pool, st: Elastic, workers: list[Any],
                     queue: dict[str, Any]) -> tuple[Held, int, dict[str, Any]]:
        """Whether the queue itself keeps its waiting jobs from starting, so that a worker
        more would only wait too; and the most workers this host can keep running (the step
        up's ceiling). Fleet-wide figures: a pause and a global_concurrency hold on every host,
        the running count is the queue's, and a rate limit throttles every host's reserves."""
        scale = pool.config.autoscale
        assert scale is not None
        ceiling = scale.max
        at = float(queue.get("at", 0.0))
        if st.throttled is None or at != st.throttled[0]:  # fresh figures: did the limit refuse?
            count = int(queue.get("throttled", 0))
            if st.throttled is not None and count > st.throttled[1]:
                st.throttled_rose = at
            st.throttled = (at, count)
        if queue.get("paused"):
            return Held.PAUSED, ceiling, {}
        gc = pool.config.global_concurrency
        if gc:
            active = int(queue.get("active", 0))
            slots = pool.config.settings.jobs_per_worker
            busy = sum(w.held if w.runs is not None else int(w.state is State.BUSY) for w in workers)
            # ours that run now, and the fleet's free slots: beyond that a worker only waits
            ceiling = min(ceiling, -(-(busy + max(0, gc - active)) // slots))
            if len(workers) >= ceiling:
                return Held.GLOBAL_CONCURRENCY, ceiling, {"running": active, "global_concurrency": gc}
        # a limit refusing starts lately: the workers there already wait for their tickets
        # (a limit slower than that window lets a step through now and then; the idle rule
        # takes it back)
        if at - st.throttled_rose <= max(scale.up_cooldown, THROTTLE_WINDOW):
            return Held.RATE_LIMIT, ceiling, {"throttled": st.throttled[1]}
        return Held.NO, ceiling, {}

    def _up(self, pool: Pool, st: Elastic, scale: Autoscale, now: float, queue: dict[str, Any],
            reason: str, signals: dict[str, Any], ceiling: int) -> None:
        target = pool.target
        if target >= min(scale.max, ceiling):
            return
        if len(pool.current()) < target or queue.get("at", 0.0) <= st.last_step:
            return  # the last step's workers are still coming, or these figures predate it
        if now - st.last_up < scale.up_cooldown:
            return
        held, readings = self.host.refuses(self.guards)
        if held or st.held:
            self._hold(pool, st, held, {**signals, **readings})
        if held:
            return
        step = min(2 ** st.streak, min(scale.max, ceiling) - target)
        st.streak += 1
        st.last_up = now
        signals["step"] = step
        self._step(pool, st, now, "up", target + step, reason, signals)

    def _step(self, pool: Pool, st: Elastic, now: float, direction: str, to: int, reason: str,
              signals: dict[str, Any]) -> None:
        decision = Decision(time.time(), direction, pool.target, to, reason, signals)
        st.history.append(decision)
        st.last_step = now
        pool.target = to
        self.on_decision(pool.name, direction, reason)
        log.info("queue %s: scaling %s %d -> %d (%s: %s)", pool.name, direction, decision.before, to,
                 reason, ", ".join(f"{k} {v}" for k, v in signals.items()),
                 extra=fields(queue=pool.name, reason=f"scale_{direction}"))

    def _hold(self, pool: Pool, st: Elastic, held: Held, readings: dict[str, Any]) -> None:
        """A guard starts or stops holding the pool's steps up: logged once per change."""
        if held is st.held:
            return
        if held:
            shown = {k: format_size(v) if k.endswith("memory") else v for k, v in readings.items()}
            log.warning("queue %s: not scaling up (held: %s): %s", pool.name, held.value,
                        ", ".join(f"{k} {v}" for k, v in shown.items()),
                        extra=fields(queue=pool.name, reason="scale_held"))
            self.on_decision(pool.name, "held", held.name.lower())
        else:
            log.info("queue %s: %s no longer holds scaling up", pool.name, st.held.value,
                     extra=fields(queue=pool.name, reason="scale_held"))
        st.held = held

    def next_wakeup(self, now: float, pools: Mapping[str, Pool]) -> float:
        """When a decision may next fall due that no other timer of the loop brings: an idle
        worker reaching down_idle, a cooldown ending. (Queue figures arrive with the
        housekeeper's ticks, which wake the loop themselves.)"""
        times = [math.inf]
        for name, pool in pools.items():
            scale, st = pool.config.autoscale, self.state.get(name)
            if not scale or st is None:
                continue
            if pool.target > scale.min:
                idle = [w.idle_since for w in pool.current() if w.state is State.IDLE]
                if idle:
                    times.append(max(min(idle) + scale.down_idle, st.last_step + scale.down_cooldown))
            if st.streak and pool.target < scale.max:
                times.append(st.last_up + scale.up_cooldown)
        if self.guards.max_cpu is not None and self.state:
            times.append(self.host.next_sample())
        # a time already past is a decision something else holds (an overloaded queue keeps an
        # idle worker from being retired, a guard a step up...): the housekeeper's next look
        # at the queue brings fresh figures, and with them the loop
        return min((t for t in times if t > now), default=math.inf)

    def snapshot(self, pool: Pool) -> dict[str, Any] | None:
        scale = pool.config.autoscale
        if not scale:
            return None
        st = self.state.get(pool.name) or Elastic()
        return {"min": scale.min, "max": scale.max, "desired": pool.desired(), "actual": len(pool.current()),
                "held": st.held.value or None, "history": [d.as_dict() for d in st.history]}
