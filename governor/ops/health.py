"""The master's health as probes and systemd see it: ``/healthz``, STATUS, watchdog, drain.

``/healthz`` answers 503 while Redis has been away longer than
``health.redis_grace`` or the loop woke up more than ``health.max_loop_lag``
late (a stuck loop does not answer at all). Under systemd the loop itself
sends READY, the watchdog ping and STATUS, so both stop when the loop does;
a graceful drain that still makes progress extends systemd's stop timeout.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from governor.config import Config
from governor.ops.systemd import Notifier

LATE_MEMORY = 10.0  # seconds /healthz keeps reporting a late loop, so a probe can see it
EXTEND_EVERY = 5.0  # seconds between extensions of systemd's stop timeout while draining
PROGRESS = 10.0  # seconds without a job or worker finishing after which a drain is not extended


def watchdog_interval() -> float:
    """Half of systemd's WatchdogSec (WATCHDOG_USEC), if the watchdog is meant for us."""
    usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or (pid and pid != str(os.getpid())):
        return 0.0
    return int(usec) / 2e6


class Health:
    """What the loop reports of itself; ``redis`` is the master's Redis-health monitor
    (supervise/redishealth.py: its ``down_since``, ``last_ok`` and ``check()``)."""

    def __init__(self, config: Config, notifier: Notifier) -> None:
        self.config = config
        self.notifier = notifier
        self.redis: Any = None  # set once the master has connected
        self.ready_sent = False
        self.watchdog_interval = watchdog_interval()
        self.next_watchdog = 0.0
        self.next_extend = 0.0
        self.late = (-1e9, 0.0)  # (when, how late) the loop last woke more than max_loop_lag late
        self.finished = 0  # job runs that ended, for the jobs/s in systemd's STATUS
        self.last_progress = 0.0  # monotonic time a job or worker last finished (drain progress)
        self._rate_mark = (time.monotonic(), 0)

    def configure(self, config: Config) -> None:
        self.config = config

    def progress(self, now: float, runs: int = 0) -> None:
        """Runs ended, or a worker did: a drain is making progress."""
        self.finished += runs
        self.last_progress = now

    def rate(self, now: float) -> float:
        """Job runs ended per second, over the last ten seconds or so."""
        mark_t, mark_n = self._rate_mark
        rate = (self.finished - mark_n) / (now - mark_t) if now - mark_t > 0.5 else 0.0
        if now - mark_t >= 10.0:
            self._rate_mark = (now, self.finished)
        return rate

    def note_lateness(self, seconds: float) -> None:
        if seconds > self.config.health.max_loop_lag:
            self.late = (time.monotonic(), seconds)

    def ready(self, now: float, summary: str) -> None:
        """Every pool is up: READY=1, and the watchdog runs from now on."""
        self.ready_sent = True
        self.next_watchdog = now
        self.notifier.ready(summary)

    def notify(self, now: float, draining_until: float | None, summary: Callable[[], str]) -> None:
        """The watchdog ping, and while a graceful drain lasts (until ``draining_until``), an
        extension of systemd's stop timeout as long as jobs keep finishing."""
        if self.watchdog_interval and self.ready_sent and now >= self.next_watchdog:
            # sent from the loop itself, so it stops when the loop does: systemd then restarts us
            self.notifier.notify("WATCHDOG=1", f"STATUS={summary()}")
            self.next_watchdog = now + self.watchdog_interval
        if draining_until is not None and self.notifier.enabled and now >= self.next_extend:
            # keep systemd's stop timeout from cutting a drain that is still making progress
            if now - self.last_progress < PROGRESS or self.next_extend == 0.0:
                remaining = max(draining_until - now, 0.0) + PROGRESS
                self.notifier.notify(f"EXTEND_TIMEOUT_USEC={int(remaining * 1e6)}", f"STATUS={summary()}")
            self.next_extend = now + EXTEND_EVERY

    def next_wakeup(self, draining: bool) -> float:
        times = []
        if self.watchdog_interval and self.ready_sent:
            times.append(self.next_watchdog)
        if draining and self.notifier.enabled:
            times.append(self.next_extend)
        return min(times, default=float("inf"))

    def serve(self, stopping: str | None) -> tuple[int, str, bytes]:
        """``/healthz``: 503 when Redis has been unreachable for longer than health.redis_grace,
        or when the loop woke up more than health.max_loop_lag late. (A stuck loop does not
        answer.)"""
        problems = []
        if time.monotonic() - self.redis.last_ok > 2.0:
            self.redis.check()  # an idle master talks to Redis only every few seconds
        if self.redis.down_since is not None:
            down = time.monotonic() - self.redis.down_since
            if down > self.config.health.redis_grace:
                problems.append(f"redis unreachable for {down:.0f}s")
        late_at, lag = self.late
        if time.monotonic() - late_at < LATE_MEMORY:
            problems.append(f"master loop was {lag:.1f}s late {time.monotonic() - late_at:.0f}s ago")
        if stopping:
            problems.append(f"stopping ({stopping})")
        body = ("; ".join(problems) or "ok") + "\n"
        return (503 if problems else 200), "text/plain; charset=utf-8", body.encode()
