"""Why a worker exited, and what becomes of the job it held (master process; pure functions).

The master reaps a worker through its pidfd and asks here what the exit was: a
crash, a kill for a reason of ours (a limit, a lie, a shutdown), or a worker that
left as agreed (drained, recycled, its channel lost). Nothing here forks, reads a
clock or talks to Redis, so every case is unit-tested without ``governor run``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from governor.supervise.handlerstats import runtimes_kept
from governor.supervise.housekeeping import LostJob, all_lanes
from governor.supervise.process import State, WorkerProcess, describe_exit
from governor.supervise.runtable import slot_id

LOUD = ("memory_hard", "timeout_hard")  # kills an operator should see as warnings


class Stopping(enum.Enum):
    """How the master is stopping (``None`` while it is not)."""

    GRACEFUL = "graceful"  # SIGTERM: no new jobs; jobs in flight get shutdown_timeout
    FAST = "fast"  # SIGINT, SIGQUIT: every worker killed now, its job requeued


@dataclass(frozen=True)
class Exit:
    """What a worker's exit was, as the master logs, counts and charges it."""

    reason: str  # 'crashed', the reason it was stopped for, or 'exited'
    crashed: bool
    killed: bool  # by us (its stop_detail then says why)
    description: str  # "exit code 3", "killed by SIGKILL"
    detail: dict[str, Any]  # measured figures (exit code or signal, peak memory, a limit)
    back_off: bool  # died young, holding no job: counts toward the pool's crash backoff

    @property
    def loud(self) -> bool:
        """Logged as a warning: a crash or a hard limit."""
        return self.crashed or self.reason in LOUD


def classify_exit(wp: WorkerProcess, status: int, stopping: Stopping | None) -> Exit:
    """The exit of ``wp`` with wait status ``status``. A worker we killed exits for the reason
    we killed it (a limit, ``protocol_violation``, ``shutdown``); one whose channel its job
    closed exits cleanly after settling that job, which it could not report (``channel_lost``):
    not a crash. Anything else that died holding a job, unasked, or with a non-zero status
    crashed."""
    description, exit_detail = describe_exit(status)
    killed = wp.state is State.STOPPING
    lost_channel = wp.stop_reason == "channel_lost" and status == 0
    crashed = not killed and not lost_channel and (wp.job is not None or wp.stop_reason is None
                                                    or status != 0)
    detail = {**exit_detail, "peak_rss": wp.peak_rss or None, **(wp.stop_detail if killed else {})}
    # Crash-loop backoff is for workers that die before taking a job (a broken import, a bad
    # deploy). One that died running a job is that job's fault: the job is charged (retried,
    # then dead-lettered as a poison job) and the worker replaced at once.
    return Exit(reason="crashed" if crashed else (wp.stop_reason or "exited"), crashed=crashed,
                killed=killed, description=description,
                detail={k: v for k, v in detail.items() if v is not None},
                back_off=crashed and wp.job is None and wp.jobs_done == 0 and stopping is None)


def likely_first(known: int | None, lanes: list[int | None]) -> tuple[int | None, ...]:
    """Where a dead worker's lease may be: the partition of its last known job first, then
    every other (it may have taken a job since that we did not hear of)."""
    return tuple(sorted(lanes, key=lambda p: p != known))


def lost_job(wp: WorkerProcess, exit: Exit, queue: Any, ran: float | None) -> LostJob:
    """The job ``wp`` may have died holding, to be settled by the housekeeper: requeued
    uncharged after a shutdown, else retried (or dead-lettered) as an attempt. ``queue`` is
    its pool's QueueConfig (None once the queue was removed by a reload); ``ran``: how long
    its job ran, if it ran one."""
    job = wp.job
    adaptive = queue.settings.timeout.adaptive if queue else None
    return LostJob(queue=wp.queue, wid=wp.wid, pid=wp.pid, reason=exit.reason,
                   description=exit.description, mode="requeue" if exit.reason == "shutdown" else "retry",
                   seconds=round(ran, 3) if ran is not None else None,
                   known=(job.id, job.token) if job else None,
                   max_retries=queue.settings.retry.max if queue else 0, detail=exit.detail,
                   partitions=likely_first(job.partition if job else None,
                                           all_lanes(queue) if queue else [None]),
                   handler=job.handler if job else None,
                   keep=runtimes_kept(adaptive) if adaptive and job and job.adaptive
                   and exit.reason == "timeout_hard" else 0)


def lost_jobs(wp: WorkerProcess, exit: Exit, queue: Any, now: float) -> list[LostJob]:
    """The jobs ``wp`` may have died holding. One job per process: the one ``lost_job`` says.
    Several (jobs_per_worker > 1): one per slot, each found by its slot's lease in Redis (the
    master may not have seen the latest it reserved). Only the job that caused the kill is
    charged: past its hard limit and grace (``timeout_hard``), or the only one that ran (a
    crash or memory.hard with one job). Its neighbours are requeued, not charged; after a
    crash or memory.hard with several running, each goes back as a *suspect*, which runs
    alone next time (so the one that blows the limit is charged then, and only it)."""
    if wp.runs is None:
        return [lost_job(wp, exit, queue, wp.run_time(now))]
    lanes = all_lanes(queue) if queue else [None]
    end = wp.killed_at or now
    # charged: every job past its own hard limit when the worker died for one (a job still in
    # its grace had overrun too; sparing it would only run it again, and again)
    overdue = {j.index for j in wp.overdue(end, grace=False)} if exit.reason == "timeout_hard" else set()
    running = [j for j in wp.jobs.values() if j.since]
    adaptive = queue.settings.timeout.adaptive if queue else None
    lost = []
    for index in range(wp.runs.slots):
        job = wp.jobs.get(index)
        if exit.reason == "shutdown":
            mode, reason = "requeue", "shutdown"
        elif index in overdue:
            mode, reason = "retry", "timeout_hard"
        elif exit.reason == "timeout_hard":
            mode, reason = "requeue", "neighbour_killed"
        elif exit.reason in ("memory_hard", "crashed") and len(running) > 1:
            mode, reason = "suspect", exit.reason
        elif exit.reason in ("memory_hard", "crashed") and job is not None and job.since:
            mode, reason = "retry", exit.reason  # it ran alone: it is the cause
        else:
            mode, reason = "requeue", exit.reason if job is None else "neighbour_killed"
        charged = mode == "retry"
        lost.append(LostJob(
            queue=wp.queue, wid=slot_id(wp.wid, index), pid=wp.pid, reason=reason,
            description=exit.description,
            mode=mode, seconds=round(end - job.since, 3) if job and job.since else None,
            known=(job.id, job.token) if job else None,
            max_retries=queue.settings.retry.max if queue else 0,
            detail=exit.detail if charged or mode == "suspect" else {"beside": exit.reason},
            partitions=likely_first(job.partition if job else None, lanes),
            handler=job.handler if job else None,
            keep=runtimes_kept(adaptive) if adaptive and job and job.adaptive and charged
            and reason == "timeout_hard" else 0))
    return lost
