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

Runs in: master.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from governor.protocol.queue import MAX_TIMEOUT
from governor.supervise.pool import Pool
from governor.supervise.process import CurrentJob, State, WorkerProcess
from governor.supervise.scoreboard import OUTCOMES, Report, Scoreboard

SCAN_BUSY = 0.05  # seconds between looks while any worker runs a job
SCAN_IDLE = 5.0   # ... and while none does (a worker that starts one rings)
MAX_COUNT = 2 ** 53  # a counter beyond this is no honest report's (and no longer exact as a float)
MAX_TORN = 2.0  # seconds a report may stay half written (a writer preempted mid-write) before it is a lie
CLOCK_SLACK = 1.0  # seconds a run's start may lie outside the worker's life on the master's clock


def _stopped(pid: int) -> bool:
    """The process is stopped (SIGSTOP: frozen by the sentry, or by hand): read from the kernel,
    not from the page its job can write."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        return stat[stat.rindex(b")") + 2:stat.rindex(b")") + 3] in (b"T", b"t")
    except (OSError, ValueError):
        return False


def _lie(r: Report, before: Report | None, w: WorkerProcess, pool: Pool, now: float) -> str | None:
    """What makes this report impossible for an honest worker, or None.

    The worker's job can write its own scoreboard page (the mapping is in its process), so
    a report is untrusted input: counters that shrink or overflow would make metrics raise,
    a start time or limit that is not finite would poison every deadline computed from it,
    a partition out of range would send a requeue nowhere."""
    numbers = (r.started, r.soft, r.hard, r.run_seconds, r.wait_seconds)
    if not all(math.isfinite(x) for x in numbers):
        return "a figure that is not a finite number"
    if r.run < 0 or r.finished < 0 or r.run_seconds < 0 or r.wait_seconds < 0 or r.finished > MAX_COUNT:
        return "a negative or impossible counter"
    if any(c < 0 or c > MAX_COUNT for c in r.counts):
        return "a negative or impossible counter"
    if before is not None:
        if r.finished < before.finished or r.run_seconds < before.run_seconds \
                or r.wait_seconds < before.wait_seconds \
                or any(a < b for a, b in zip(r.counts, before.counts, strict=True)):
            return "a counter that went back"
    if r.run:
        if not w.started - CLOCK_SLACK <= r.started <= now + CLOCK_SLACK:
            return f"a run started outside the worker's life ({r.started:.3f})"
        timeout = pool.config.settings.timeout
        # an honest limit is the queue's, a job's own (at most MAX_TIMEOUT) or a learnt one
        cap = max(MAX_TIMEOUT, timeout.hard or 0.0, timeout.soft or 0.0,
                  timeout.adaptive.max if timeout.adaptive else 0.0)
        if not (0 <= r.soft <= cap and 0 <= r.hard <= cap):
            return "a time limit out of range"
        if timeout.hard and not r.hard:
            return "a run without the hard limit its queue has"
        if not (0 <= r.attempt < 2 ** 31 and -1 <= r.partition < max(pool.config.partitions or 0, 0)
                and r.adaptive in (0, 1)):
            return "an attempt, partition or flag out of range"
    return None


class WorkerReports:
    """Reads the reports; owns what was last seen of each, so counters turn into deltas."""

    def __init__(self, board: Scoreboard, metrics: Any,
                 on_finished: Callable[[Pool, WorkerProcess, int, int | None], None],
                 on_lie: Callable[[WorkerProcess, str], None]) -> None:
        self.board = board
        self.metrics = metrics
        # (pool, worker, runs finished since the last look, the partition of its last run)
        self.on_finished = on_finished
        self.on_lie = on_lie  # (worker, what was impossible): the master replaces it
        self.next_scan = 0.0
        self._seen: dict[int, Report] = {}  # per worker pid
        self._torn: dict[int, float] = {}  # per worker pid: since when no whole copy could be read

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
        if w.slot < 0 or w.state is State.STOPPING and w.stop_reason == "protocol_violation":
            return  # (a liar's report is read no more: it is being killed)
        r = self.board.report(w.slot, text=False)
        if r is not None and r.run and (w.job is None or w.job.run != r.run):
            r = self.board.report(w.slot)  # a new run: its id, token and handler too
        if r is None:  # being written: look again on the next pass, unless it never ends
            now = time.monotonic()
            torn = self._torn.setdefault(w.pid, now)
            if _stopped(w.pid):  # frozen mid-write: its clock starts again when it is thawed
                self._torn[w.pid] = now
            elif now - torn > MAX_TORN:
                self.on_lie(w, f"its report stayed half written for {now - torn:.1f}s")
            return
        self._torn.pop(w.pid, None)
        if w.runs is not None:  # several jobs at once: what runs is in its run table
            lie = self._observe_table(pool, w)
            if lie is not None:
                self.on_lie(w, lie)
                return
            r = r._replace(run=0)
        before = self._seen.get(w.pid)
        if r == before:
            return  # (the common case while a long job runs: nothing new, nothing to judge)
        lie = _lie(r, before, w, pool, time.monotonic())
        new_run = bool(r.run) and (w.job is None or w.job.run != r.run)
        if lie is None and new_run and w.said_leaving:
            lie = "a run started after it said it leaves"
        if lie is None and new_run and w.state is State.DRAINING:
            w.runs_while_draining += 1  # (one may start honestly: reserved as the drain came)
            if w.runs_while_draining > 1:
                lie = "runs still starting after it was told to drain"
        if lie is not None:
            self.on_lie(w, lie)
            return
        if new_run:
            w.on_start(CurrentJob(id=r.job_id, token=r.token, handler=r.handler, attempt=r.attempt,
                                  since=r.started, soft=r.soft or None, hard=r.hard or None,
                                  partition=r.partition if r.partition >= 0 else None, run=r.run,
                                  adaptive=bool(r.adaptive)))
        elif not r.run and w.job is not None and w.runs is None:
            if w.state is State.STOPPING:
                w.job = None  # killed between two runs: it died running nothing
            else:
                w.on_end()
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

    def _observe_table(self, pool: Pool, w: WorkerProcess) -> str | None:
        """A worker with several jobs at once: its run table's header only (how many jobs it
        holds, when the first of them must be killed, a blocked event loop): no per-job work
        on the master's clock. Its entries are read when something needs the jobs themselves
        (a renewal, a kill, an exit, ``status``: ``WorkerProcess.refresh_jobs``)."""
        assert w.runs is not None
        gen = w.runs.generation()
        if gen == w.runs_seen:
            return None
        _, held, since, _, kill_at = gen
        if not (math.isfinite(since) and math.isfinite(kill_at) and 0 <= held <= w.runs.slots and since >= 0
                and (not kill_at or w.started - CLOCK_SLACK <= kill_at <= time.monotonic() + 2 * MAX_TIMEOUT)):
            return "a run table header out of range"
        w.runs_seen = gen
        w.loop_blocked = (since, gen[3]) if since else None
        w.kill_at = kill_at or None
        if held and w.said_leaving and held > w.held:
            return "a job taken after it said it leaves"
        w.held = held
        if not held:
            w.on_jobs({})
        elif w.job is None:
            w.refresh_jobs()  # (an idle worker took work: which, once)
        return None

    def forget(self, w: WorkerProcess) -> None:
        self._seen.pop(w.pid, None)
        self._torn.pop(w.pid, None)
