"""The master's side of its workers: what they say, what their leases and reports tell, how
they exit (master process).

Each worker has a socketpair (messages: ready, busy, exit, recycle, fatal), a
scoreboard report (its runs, read on the master's clock by ``WorkerReports``),
its lease renewals (the housekeeper's) and a pidfd (its death). ``Children``
answers each of these; the master's loop routes the events here and keeps the
pools, the loop and the timers.

Runs in: master.
"""

from __future__ import annotations

import logging
import os
import selectors
import time
from collections.abc import Callable, Mapping
from typing import Any

from governor.log import fields
from governor.ops.health import Health
from governor.protocol.queue import run
from governor.supervise import channel, proctree
from governor.supervise.enforce import max_concurrent_recycles
from governor.supervise.exits import Stopping, classify_exit, lost_jobs
from governor.supervise.housekeeping import Housekeeper
from governor.supervise.pool import Pool
from governor.supervise.process import State, WorkerProcess
from governor.supervise.reports import WorkerReports
from governor.supervise.scoreboard import Scoreboard

log = logging.getLogger("governor.master")


def _running(pid: int) -> bool:
    """Not yet exited (a zombie counts as exited); never reaps."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:
        return False


class Children:
    """Answers the workers' events for the master, and acts on them for it (kill them all,
    send idle ones to a partition with work). ``housekeeper`` (the housekeeper) is given once the
    master has connected to Redis: until then no worker runs."""

    def __init__(self, *, selector: selectors.BaseSelector, pools: Mapping[str, Pool], board: Scoreboard,
                 metrics: Any, health: Health, stopping: Callable[[], Stopping | None]) -> None:
        self.selector, self.pools, self.board, self.metrics = selector, pools, board, metrics
        self.health, self.stopping = health, stopping
        self.housekeeper: Housekeeper = None  # type: ignore[assignment]
        self.reports = WorkerReports(board, metrics, self.on_finished, self.on_lie)
        self.strays_due = False  # a worker was reaped: what its tree left re-parented to us dies

    # -- leases: what the renewals say about the jobs the sentry guards ----------------

    def on_lease_lost(self, wp: WorkerProcess, cut_off: float) -> None:
        """Redis no longer holds this worker's job for it (the lease ran out while the host was
        cut off, and another host took the job): the run, frozen by the sentry or not, must
        not go on. Killed like a timeout; its job's record says what happened."""
        log.error("worker %r lost the lease of job %s after %.1fs without a confirmed renewal "
                  "(another host has it now); killing its run", wp, wp.job.id if wp.job else "?",
                  cut_off, extra=fields(worker=f"{wp.queue}[{wp.index}]", worker_pid=wp.pid,
                                        queue=wp.queue, reason="lease_lost",
                                        job=wp.job.id if wp.job else None))
        self.metrics.lease_lost.labels(wp.queue).inc()
        wp.kill("lease_lost", cut_off=round(cut_off, 3))

    def on_thaw(self, wp: WorkerProcess, frozen_for: float) -> None:
        """A renewal came through for a run the sentry had frozen: the lease was ours all along
        (renewed with the same token, nobody took the job), so the run goes on."""
        proctree.thaw_tree(wp.pid, wp.pidfd)
        self.board.set_frozen(wp.slot, 0.0)
        self.metrics.lease_frozen.labels(wp.queue).inc()
        log.warning("worker %r resumed after %.1fs frozen: its lease could not be confirmed, and "
                    "was still ours", wp, frozen_for,
                    extra=fields(worker=f"{wp.queue}[{wp.index}]", worker_pid=wp.pid, queue=wp.queue,
                                 reason="lease_frozen"))

    # -- the channel, the reports, the exit ---------------------------------------------

    def on_channel(self, wp: WorkerProcess, exited: bool = False) -> None:
        messages, closed, malformed = channel.receive_all(wp.sock)
        while exited and not closed:  # its last words: every one of them, however many
            more, closed, bad = channel.receive_all(wp.sock)
            messages, malformed = messages + more, malformed + bad
            closed = closed or not (more or bad)
        now = time.monotonic()
        pool = self.pools.get(wp.queue)
        if malformed and not exited:
            self.on_lie(wp, f"{malformed} malformed message(s) on its channel")
            messages = []  # a worker that lies is believed in nothing
        for msg in messages:
            wp.on_message(msg, now)
            if msg[0] == "busy":
                self.reports.ring()
            elif msg[0] == "exit" and not exited:
                wp.hold_to_word()
            elif msg[0] == "recycle" and pool:
                self.answer_recycle(pool, wp, str(msg[1]))
        if closed:
            self.selector.unregister(wp.sock)
            if not exited and _running(wp.pid) and wp.lose_channel():
                log.warning("worker %r closed its channel to the master (its job closed the "
                            "descriptor); it settles that job and exits; replacing it", wp,
                            extra=fields(worker=f"{wp.queue}[{wp.index}]", worker_pid=wp.pid,
                                         queue=wp.queue, reason="channel_lost",
                                         job=wp.job.id if wp.job else None))

    def on_lie(self, wp: WorkerProcess, why: str) -> None:
        """A worker said something no honest worker says (its job wrote on the channel or the
        scoreboard): nothing it says is believed any more; it is killed at once and replaced,
        and the job it runs is charged as the job that did it (``protocol_violation``)."""
        if wp.state is State.STOPPING:
            return
        log.warning("worker %r broke the worker protocol (%s): killing and replacing it", wp, why,
                    extra=fields(worker=f"{wp.queue}[{wp.index}]", worker_pid=wp.pid, queue=wp.queue,
                                 reason="protocol_violation", job=wp.job.id if wp.job else None))
        wp.kill("protocol_violation", why=why)

    def on_finished(self, pool: Pool, wp: WorkerProcess, runs: int, partition: int | None) -> None:
        """A look at the reports found runs that ended (workers count them; no message)."""
        now = time.monotonic()
        self.housekeeper.touch(wp.queue, now, partition)
        self.health.progress(now, runs)
        if pool.backoff:
            log.info("queue %s: a worker finished a job; crash backoff reset", wp.queue)
            pool.backoff, pool.respawn_at, pool.last_error = 0.0, 0.0, None

    def answer_recycle(self, pool: Pool, wp: WorkerProcess, reason: str) -> None:
        """Grants a retirement unless too many of the pool's workers are already recycling."""
        recycling = sum(1 for w in pool if w.state is State.DRAINING
                        and w.stop_reason in ("max_jobs", "max_age"))
        limit = max_concurrent_recycles(pool.config.settings.recycle, pool.desired())
        granted = recycling < limit or self.stopping() is not None
        try:
            wp.sock.send(b"go" if granted else b"later")
        except OSError:
            return
        if granted:
            wp.recycle(reason)
            log.info("worker %r recycling (%s, after %d jobs, %.0fs)", wp, reason, wp.jobs_done,
                     time.monotonic() - wp.started,
                     extra=fields(worker=f"{wp.queue}[{wp.index}]", worker_pid=wp.pid, queue=wp.queue,
                                  reason=reason))

    def on_exit(self, wp: WorkerProcess) -> None:
        try:
            pid, status = os.waitpid(wp.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = wp.pid, 0
        if pid == 0:
            return
        if wp.sock.fileno() in self.selector.get_map():
            self.on_channel(wp, exited=True)  # what it said before dying still sits in the socket
        if wp.sock.fileno() in self.selector.get_map():  # on_channel unregisters it on EOF
            self.selector.unregister(wp.sock)
        self.selector.unregister(wp.pidfd)
        wp.close()
        pool = self.pools.get(wp.queue)
        if pool:  # its last words: the runs it finished, and the job it died running (exactly)
            self.reports.observe(pool, wp)
        wp.refresh_jobs()  # (several at once: every job its run table holds, before the slot is cleared)
        self.reports.forget(wp)
        self.board.release(wp.slot)
        self.strays_due = True  # killed once the batch of exits is read, before any requeue
        pool = self.pools.get(wp.queue)
        if pool:
            pool.workers.pop(wp.pid, None)
        now = time.monotonic()
        ex = classify_exit(wp, status, self.stopping())
        if pool:
            pool.exits[ex.reason] += 1
        self.metrics.exits.labels(wp.queue, ex.reason).inc()
        self.housekeeper.touch(wp.queue, now)
        ran = wp.run_time(now)
        self.health.progress(now, 0 if ran is None else 1)
        if ran is not None:  # the run ended with its worker: count it under the kill's reason
            self.metrics.jobs.labels(wp.queue, ex.reason).inc()
            self.metrics.duration.observe(wp.queue, ran)
        (log.warning if ex.loud else log.info)(
            "worker %r exited (%s), reason %s%s", wp, ex.description, ex.reason,
            "".join(f", {k} {v}" for k, v in wp.stop_detail.items()) if ex.killed else "",
            extra=fields(worker=f"{wp.queue}[{wp.index}]", worker_pid=wp.pid, queue=wp.queue,
                         reason=ex.reason, job=wp.job.id if wp.job else None))
        for lost in lost_jobs(wp, ex, pool.config if pool else None, now):
            self.housekeeper.lose(lost)
        if ex.back_off and pool:
            error = wp.fatal or ex.description
            backoff = pool.note_crash(now, error, wp.started)
            if backoff is not None:
                log.error("queue %s: worker died before finishing a job (%s); respawning in %.0fs",
                          wp.queue, error, backoff, extra=fields(queue=wp.queue, reason="crashed"))

    # -- what the master does to them ------------------------------------------------------

    def kill_all(self, warn: str | None = None) -> None:
        """SIGKILL every worker not already dying; their jobs are requeued as they are reaped."""
        for pool in self.pools.values():
            for w in pool:
                if w.state is not State.STOPPING:
                    if warn:
                        log.warning("worker %r %s", w, warn)
                    w.kill("shutdown")

    def hint_idle(self, queue: str, partition: int, waiting: int) -> None:
        """A partition we hold has jobs waiting: send idle workers to it. (Hints from producers
        reach them at once; this catches what no hint announced: a worker that left a backlog
        to recycle, a retry falling due, a partition just acquired.)"""
        pool = self.pools.get(queue)
        idle = sum(1 for w in pool if w.state is State.IDLE) if pool else 0
        if idle:
            run(self.housekeeper.redis, self.housekeeper.keys(queue).hint({partition: min(waiting, idle)}))
