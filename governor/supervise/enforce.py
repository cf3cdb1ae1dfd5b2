"""Limit policy and measurement: how much memory a worker uses, and what to do about it.

Measurement reads /proc directly, because the master samples every worker
every ``memory.interval`` and must stay cheap (a worker with no children
costs two small reads, ~20 µs). A worker's figure includes all its
descendants, found through ``/proc/PID/task/TID/children``, so a handler that
shells out to ImageMagick cannot hide its memory in a grandchild.

RSS over-counts pages shared copy-on-write with a preloaded master; when
``memory.measure`` is ``uss`` or ``pss`` an RSS reading over a limit is only a
suspicion, confirmed from ``smaps_rollup`` (milliseconds, so only then).

Runs in: master.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass

from governor.config import MemoryLimits, RecyclePolicy
from governor.log import fields
from governor.supervise.pool import Pool
from governor.supervise.process import State, WorkerProcess, rss_bytes
from governor.supervise.proctree import descendants
from governor.units import format_size

log = logging.getLogger("governor.master")

def tree_rss(pid: int) -> int:
    return sum(rss_bytes(p) or 0 for p in descendants(pid))


def tree_private(pid: int, measure: str) -> int:
    """USS (private pages) or PSS (private plus a fair share of shared) of the tree, in bytes."""
    total = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup", "rb") as fh:
                lines = fh.read().splitlines()[1:]
        except OSError:
            continue
        kib = {k: int(v.split()[0]) for k, _, v in (ln.partition(b":") for ln in lines) if v.strip()}
        if measure == "pss":
            total += kib.get(b"Pss", 0) * 1024
        else:
            total += (kib.get(b"Private_Clean", 0) + kib.get(b"Private_Dirty", 0)) * 1024
    return total


@dataclass(frozen=True)
class Verdict:
    action: str  # 'kill' (memory_hard) or 'recycle' (memory_soft)
    reason: str
    measured: int
    limit: int


def judge_memory(pid: int, rss: int, limits: MemoryLimits) -> Verdict | None:
    """What a sample means: nothing, a soft recycle or a hard kill (confirmed if configured)."""
    hard, soft = limits.hard, limits.soft
    if not (hard and rss > hard) and not (soft and rss > soft):
        return None
    measured = rss if limits.measure == "rss" else tree_private(pid, limits.measure)
    if hard and measured > hard:
        return Verdict("kill", "memory_hard", measured, hard)
    if soft and measured > soft:
        return Verdict("recycle", "memory_soft", measured, soft)
    return None


def jittered_limits(policy: RecyclePolicy) -> tuple[int | None, float | None]:
    """One worker's own max_jobs and max_age: up to ``jitter`` below the configured value, drawn
    once per worker so that a pool started together does not recycle together."""
    jobs = age = None
    if policy.max_jobs:
        jobs = max(1, round(policy.max_jobs * (1 - random.uniform(0, policy.jitter))))
    if policy.max_age:
        age = policy.max_age * (1 - random.uniform(0, policy.jitter))
    return jobs, age


def max_concurrent_recycles(policy: RecyclePolicy, concurrency: int) -> int:
    return policy.max_concurrent or max(1, concurrency // 4)


# -- enforcement, run by the master on every pass ------------------------------------------

IDLE_SAMPLE = 5.0  # seconds between memory samples of an idle worker (busy ones: memory.interval)


def enforce_hard_deadlines(pools: Iterable[Pool], now: float) -> None:
    """Hard time limits, from the master's own clock: a worker stuck in C code or with
    signals blocked is killed all the same. Deadlines that fall together (a wave of stuck
    jobs) are stopped all at once first, so no kill waits for the ones before it to freeze;
    a deadline that falls while the kills go on is stopped before the next kill, so none
    waits for the pass to end."""
    workers = [w for pool in pools for w in pool]
    stopped: list[tuple[WorkerProcess, float]] = []

    def stop_due() -> float:
        """SIGSTOPs every worker past its deadline; returns the next deadline to fall."""
        upcoming = math.inf
        for w in workers:
            deadline = w.hard_deadline()
            if deadline is None or w.killed_at is not None:
                continue
            if time.monotonic() >= deadline:
                w.stop_now()
                stopped.append((w, deadline))
            else:
                upcoming = min(upcoming, deadline)
        return upcoming

    upcoming = stop_due()
    for w, deadline in stopped:  # (grows while it runs)
        if time.monotonic() >= upcoming:
            upcoming = stop_due()
        job = w.job
        if w.runs is not None:  # several jobs: the kill is for the one past its limit and grace
            w.refresh_jobs()
            job = min(w.overdue(deadline + 1e-9) or [job], key=lambda j: j.since + (j.hard or 0))
        learnt = {"adaptive": True, "limit_s": job.hard} if job.adaptive else {}
        w.kill("timeout_hard", limit=job.hard, overshoot=round(w.killed_at - deadline, 4), **learnt)


LEAVE_MARGIN = 5.0  # seconds beyond shutdown_timeout a draining worker running nothing may take to exit


def enforce_leaving(pool: Pool, now: float, grace: float, redis_ok: bool = True) -> None:
    """A draining worker that runs no job exits by itself within moments (a command pool's
    program within shutdown_timeout); one still there ``grace`` seconds after its last run
    ended does not mean to (its job took its drain and kept it alive): killed, so a pool
    never keeps a worker it already replaced. Not while Redis is away: an honest worker may
    be retrying the settle of its last job (killing it would lose the ack and run it again)."""
    for w in pool:
        if w.state is not State.DRAINING or w.job is not None or not redis_ok:
            w.leave_by = None
        elif w.leave_by is None:
            w.leave_by = now + grace
        elif now >= w.leave_by:
            log.warning("worker %r was told to leave %.0fs ago, runs nothing and is still there: "
                        "killing it", w, grace, extra=fields(worker=f"{w.queue}[{w.index}]",
                                                             worker_pid=w.pid, queue=w.queue,
                                                             reason="drain_timeout"))
            w.kill(w.stop_reason or "drain_timeout", overstayed=round(grace, 1))


def sample_memory(pool: Pool, now: float) -> None:
    """One sampling pass over a pool, when its interval has come: kill over hard, recycle over
    soft. A worker found over memory.hard is stopped at once, and killed when the pass is
    over: a wave of them (a shared input that is too big) is frozen as fast as it is read,
    and no reading waits for a kill."""
    if pool.next_sample > now:
        return
    limits = pool.config.settings.memory
    pool.next_sample = now + limits.interval
    kills: list[tuple[WorkerProcess, Verdict]] = []
    for w in pool:
        if w.state is State.STOPPING:
            continue
        if w.state is State.IDLE and now - w.sampled < IDLE_SAMPLE and not pool.config.command:
            continue  # nothing runs in an idle worker (but a command pool's program always runs)
        w.sampled = now
        w.rss = tree_rss(w.pid)
        w.peak_rss = max(w.peak_rss, w.rss)
        verdict = judge_memory(w.pid, w.rss, limits)
        if verdict is None:
            continue
        if verdict.action == "kill":
            w.stop_now()
            kills.append((w, verdict))
        elif w.state is not State.DRAINING:
            if w.jobs_done == 0 and w.job is None:
                # a fresh worker already over the limit would be replaced forever
                if not pool.warned_soft:
                    pool.warned_soft = True
                    log.warning("queue %s: a fresh worker is already over memory.soft (%s > %s); not "
                                "recycling it. Raise the limit, or use memory.measure: pss to discount "
                                "pages shared with the master", pool.name, format_size(verdict.measured),
                                format_size(verdict.limit))
                continue
            log.info("worker %r over memory.soft (%s > %s): finishing its job, then replacing it", w,
                     format_size(verdict.measured), format_size(verdict.limit),
                     extra=fields(worker=f"{w.queue}[{w.index}]", worker_pid=w.pid, queue=w.queue,
                                  reason=verdict.reason))
            w.drain(verdict.reason)
    for w, verdict in kills:
        w.kill(verdict.reason, memory=verdict.measured, limit=verdict.limit)
