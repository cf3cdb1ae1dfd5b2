"""One queue's workers: how many it should have, how many it has, and its crash backoff.

The scaling policy is resque-pool's: every pass of the master's loop asks each
pool for ``desired - actual`` and spawns or drains the difference. Workers that
are draining do not count as actual, so their replacements start at once and
capacity holds while old workers finish their jobs.

Runs in: master.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from governor.config import QueueConfig
from governor.supervise.process import TAKING_WORK, State, WorkerProcess

BACKOFF_START = 1.0
BACKOFF_MAX = 60.0
HEALTHY_AFTER = 60.0


class Pool:
    """Owns its WorkerProcess records; the master owns the processes' lifecycle calls."""

    def __init__(self, config: QueueConfig, settings_key: Any) -> None:
        self.config = config
        self.settings_key = settings_key
        self.generation = 0
        self.removed = False
        self.workers: dict[int, WorkerProcess] = {}
        # crash-loop protection
        self.backoff = 0.0
        self.respawn_at = 0.0
        self.step_started = 0.0
        self.last_crash = 0.0
        self.last_error: str | None = None
        self.warned_soft = False
        self.spawn_error: str | None = None  # why the pool is short (fork or fd limit failed)
        self.next_sample = 0.0  # monotonic time of the next memory sampling pass
        self.exits: Counter[str] = Counter()  # worker exits by reason, for status and metrics
        # an elastic pool's desired size: the autoscaler moves it within [min, max], and the
        # reconcile loop does the rest as for any change of desired
        self.target = config.autoscale.min if config.autoscale else config.concurrency

    @property
    def name(self) -> str:
        return self.config.name

    def update(self, config: QueueConfig, settings_key: Any) -> bool:
        """Takes a reloaded config; returns True when its workers must be replaced."""
        changed = settings_key != self.settings_key
        self.config = config
        self.removed = False
        if changed:
            self.settings_key = settings_key
            self.generation += 1
        self.backoff = 0.0  # an operator's reload is a fresh start
        self.respawn_at = 0.0
        scale = config.autoscale
        if scale:  # a new range: the pool moves into it, never by interrupting a job
            self.target = min(max(self.target, scale.min), scale.max)
        else:
            self.target = config.concurrency
        return changed

    def desired(self) -> int:
        return 0 if self.removed else self.target

    def up(self) -> bool:
        """All its desired workers have started (or it is backing off: as up as it gets)."""
        return sum(1 for w in self.current() if w.state is not State.STARTING) >= self.desired() \
            or bool(self.backoff)

    def taking_work(self) -> list[WorkerProcess]:
        return [w for w in self.workers.values() if w.state in TAKING_WORK]

    def current(self) -> list[WorkerProcess]:
        return [w for w in self.taking_work() if w.generation == self.generation]

    def outdated(self) -> list[WorkerProcess]:
        return [w for w in self.taking_work() if w.generation != self.generation]

    def delta(self) -> int:
        # a command pool restarts on reload a batch at a time (to_replace): its old copies hold
        # their places until drained, so no more run at once than desired plus one batch
        rolling = len(self.outdated()) if self.config.command else 0
        return self.desired() - len(self.current()) - rolling

    def to_replace(self, batch: int) -> list[WorkerProcess]:
        """The outdated workers (of an earlier config) to drain now: all of a Python pool's
        (their replacements start at once), a command pool's ``batch`` at a time (a program
        may take long to start or stop: the pool keeps most of its copies while it rolls)."""
        outdated = self.outdated()
        if not self.config.command:
            return outdated
        rolling = sum(1 for w in self.workers.values() if w.state is State.DRAINING and w.stop_reason == "reload")
        return outdated[:max(0, batch - rolling)]

    def excess(self, n: int) -> list[WorkerProcess]:
        """The n workers to drain first: not yet started, then idle (the longest idle first:
        what an elastic pool scales down), then the busy ones whose job started last (they
        have the least work to lose... and to wait for)."""
        order = {State.STARTING: 0, State.IDLE: 1, State.BUSY: 2}

        def rank(w: WorkerProcess) -> tuple[int, float]:
            if w.state is State.IDLE:
                return order[w.state], w.idle_since
            return order[w.state], -(w.job.since if w.job else w.started)

        ranked = sorted(self.current(), key=rank)
        return ranked[:n]

    def free_index(self) -> int:
        used = {w.index for w in self.workers.values()}
        i = 0
        while i in used:
            i += 1
        return i

    def __iter__(self) -> Iterator[WorkerProcess]:
        return iter(list(self.workers.values()))

    # -- crash loops ---------------------------------------------------------

    def note_crash(self, now: float, error: str, spawned_at: float) -> float | None:
        """A worker died before finishing a job: back off (1 s doubling to 60 s).
        Returns the new delay, or None when the worker was spawned before the current step
        began (workers that crash together make one step, not several)."""
        self.last_error = error
        if self.backoff and spawned_at < self.step_started:
            return None
        self.backoff = BACKOFF_START if self.backoff == 0 else min(self.backoff * 2, BACKOFF_MAX)
        self.step_started = now
        self.respawn_at = now + self.backoff
        self.last_crash = now
        return self.backoff

    def note_spawn_failure(self, now: float, error: str, retry_in: float = 1.0) -> bool:
        """A worker could not be started (no descriptor, no memory to fork): try again in
        ``retry_in``; True the first time, so the master logs an episode once."""
        first = self.spawn_error is None
        self.spawn_error = error
        self.respawn_at = now + retry_in
        return first

    def may_spawn(self, now: float) -> bool:
        if self.backoff and now - self.last_crash >= HEALTHY_AFTER + self.backoff:
            self.backoff = 0.0
            self.last_error = None
        return now >= self.respawn_at

    def snapshot(self, now: float) -> dict[str, Any]:
        return {
            "queue": self.name,
            "desired": self.desired(),
            "actual": len(self.current()),
            "workers": [w.snapshot(now) for w in sorted(self.workers.values(), key=lambda w: w.index)],
            "backoff": {"seconds": self.backoff, "respawn_in": round(max(0.0, self.respawn_at - now), 3),
                        "last_error": self.last_error} if self.backoff else None,
            "generation": self.generation,
            "spawn_error": self.spawn_error,
            "exits": dict(self.exits),
        }
