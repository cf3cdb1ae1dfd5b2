"""What the workers' scoreboard reports say, read by the master on its own clock.

A worker writes the start and end of every run into its scoreboard slot
(scoreboard.py) and sends nothing: the master looks every ``SCAN_BUSY`` while
any worker is busy, every ``SCAN_IDLE`` otherwise, and at once when a worker
that was idle rings (one message per idle-to-busy change, none per job). A
look turns each report into the worker's state (its current job: what a hard
limit, a requeue and ``status`` need) and the growth of its counters into
metrics. A job that starts and ends between two looks is seen only in the
counters; a hard limit is enforced from the look that sees its run, at the
exact deadline, so runs with hard limits under SCAN_BUSY are the only ones
that can be killed late.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from governor.supervise.pool import Pool
from governor.supervise.process import CurrentJob, State, WorkerProcess
from governor.supervise.scoreboard import OUTCOMES, Report, Scoreboard

SCAN_BUSY = 0.05  # seconds between looks while any worker runs a job
SCAN_IDLE = 5.0   # ... and while none does (a worker that starts one rings)


class WorkerReports:
    """Reads the reports; owns what was last seen of each, so counters turn into deltas."""

    def __init__(self, board: Scoreboard, metrics: Any,
                 on_finished: Callable[[Pool, WorkerProcess, int, int | None], None]) -> None:
        self.board = board
        self.metrics = metrics
        # (pool, worker, runs finished since the last look, the partition of its last run)
        self.on_finished = on_finished
        self.next_scan = 0.0
        self._seen: dict[int, Report] = {}  # per worker pid

    def ring(self) -> None:
        """A worker that was idle started a job: look now, then every SCAN_BUSY."""
        self.next_scan = 0.0

    def scan(self, pools: Mapping[str, Pool], now: float) -> None:
        busy = False
        for pool in pools.values():
            for w in pool:
                self.observe(pool, w)
                busy = busy or w.job is not None
        self.next_scan = now + (SCAN_BUSY if busy else SCAN_IDLE)

    def observe(self, pool: Pool, w: WorkerProcess) -> None:
        """One worker's report: its current job, and what it finished since the last look."""
        if w.slot < 0:
            return
        r = self.board.report(w.slot, text=False)
        if r.run and (w.job is None or w.job.run != r.run):
            r = self.board.report(w.slot)
            w.on_start(CurrentJob(id=r.job_id, token=r.token, handler=r.handler, attempt=r.attempt,
                                  since=r.started, soft=r.soft or None, hard=r.hard or None,
                                  partition=r.partition if r.partition >= 0 else None, run=r.run,
                                  adaptive=bool(r.adaptive)))
        elif not r.run and w.job is not None:
            if w.state is State.STOPPING:
                w.job = None  # killed between two runs: it died running nothing
            else:
                w.on_end()
        before = self._seen.get(w.pid)
        self._seen[w.pid] = r
        if before is not None and before.counts == r.counts:
            return  # (the common case while a long job runs: nothing to add)
        finished = r.finished - (before.finished if before else 0)
        old = before.counts if before else (0,) * len(r.counts)
        delta = [a - b for a, b in zip(r.counts, old, strict=True)]
        n = len(OUTCOMES)
        for name, count in zip(OUTCOMES, delta[:n], strict=True):
            if count:
                self.metrics.jobs.labels(pool.name, name).inc(count)
        buckets = len(self.board.buckets) + 1
        self.metrics.duration.add(pool.name, delta[n:n + buckets],
                                  r.run_seconds - (before.run_seconds if before else 0.0))
        self.metrics.wait.add(pool.name, delta[n + buckets:],
                              r.wait_seconds - (before.wait_seconds if before else 0.0))
        if finished > 0:
            w.jobs_done += finished
            self.on_finished(pool, w, finished, r.partition if r.partition >= 0 else None)

    def forget(self, w: WorkerProcess) -> None:
        self._seen.pop(w.pid, None)
