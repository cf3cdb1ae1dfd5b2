"""The master's record of one worker child: named states and explicit transitions.

As in supervisord's ``states.py``, a worker is always in exactly one state and
every change goes through ``_to``, which refuses transitions that make no
sense, so a bug shows up as an error in the log rather than as a worker the
master has silently lost track of.

Runs in: master.
"""

from __future__ import annotations

import enum
import math
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any

from governor.supervise.channel import MAX_FATAL
from governor.supervise.proctree import kill_tree, stop_now


class State(str, enum.Enum):
    STARTING = "starting"  # forked, not yet connected to Redis
    IDLE = "idle"          # waiting for a job
    BUSY = "busy"          # running a job
    DRAINING = "draining"  # told to finish its job (if any) and exit
    STOPPING = "stopping"  # killed; waiting to reap it


_ALLOWED = {
    # (BUSY: its scoreboard report can show a run before its 'ready' message is read)
    State.STARTING: {State.IDLE, State.BUSY, State.DRAINING, State.STOPPING},
    State.IDLE: {State.BUSY, State.DRAINING, State.STOPPING},
    State.BUSY: {State.IDLE, State.DRAINING, State.STOPPING},
    State.DRAINING: {State.STOPPING},
    State.STOPPING: set(),
}

TAKING_WORK = (State.STARTING, State.IDLE, State.BUSY)


@dataclass
class CurrentJob:
    id: str
    token: str
    handler: str
    attempt: int
    since: float  # master's monotonic clock
    soft: float | None
    hard: float | None
    partition: int | None = None  # of a partitioned queue: where the job (and its lease) is
    run: int = 0  # the worker's number for this run (its scoreboard report names it)
    adaptive: bool = False  # its hard limit was learnt from its handler's runs (timeout.adaptive)
    index: int = -1  # the worker's slot holding it (jobs_per_worker > 1), else -1


class WorkerProcess:
    """One forked worker as the master sees it. Owned by its Pool."""

    def __init__(self, *, pid: int, wid: str, queue: str, index: int, generation: int,
                 sock: socket.socket, pidfd: int, now: float) -> None:
        self.pid = pid
        self.wid = wid
        self.queue = queue
        self.index = index
        self.generation = generation
        self.sock = sock
        self.pidfd = pidfd
        self.started = now
        self.state = State.STARTING
        self.job: CurrentJob | None = None
        self.jobs_done = 0
        self.stop_reason: str | None = None
        self.stop_detail: dict[str, Any] = {}  # the measured figure behind a kill
        self.fatal: str | None = None
        self.rss = 0
        self.peak_rss = 0
        self.sampled = -1e9  # monotonic time of the last memory sample
        self.slot = -1  # its slot in the master's scoreboard
        self.idle_since = now  # monotonic: when it last became idle (an elastic pool retires the longest idle)
        self.killed_at: float | None = None  # monotonic: when its run was stopped (SIGSTOP, SIGKILL)
        # It said it leaves (``exit``, or a recycle we granted): it must start no run after that,
        # and be gone soon (an honest worker is). A worker's word is its job's word: a job that
        # says "exit" and keeps taking jobs would have the pool grow around it.
        self.said_leaving = False
        self.runs_while_draining = 0  # runs seen starting after it was told to drain
        self.leave_by: float | None = None  # monotonic: draining and idle, it must be gone by then
        # jobs_per_worker > 1: its run table, the jobs it holds by slot (``job`` is the oldest
        # of them), and how long a job past its hard limit has to end before the tree is killed
        self.runs: Any = None  # runtable.RunTable
        self.runs_seen: tuple[int, int, float, int, float] = (-1, -1, 0.0, -1, 0.0)  # its header, as last read
        self.jobs_read = -1  # the header generation ``jobs`` was read at
        self.held = 0  # jobs it holds (from the header, every look)
        self.kill_at: float | None = None  # ... and when the first of them is past hard + grace
        self.loop_blocked: tuple[float, int] | None = None  # its event loop: blocked since, by slot
        self.jobs: dict[int, CurrentJob] = {}
        self.grace = 0.0

    def __repr__(self) -> str:
        return f"{self.queue}[{self.index}] pid {self.pid}"

    def _to(self, new: State) -> None:
        if new is not self.state and new not in _ALLOWED[self.state]:
            raise RuntimeError(f"worker {self!r}: illegal transition {self.state.value} -> {new.value}")
        if new is State.IDLE and self.state is not State.IDLE:
            self.idle_since = time.monotonic()
        self.state = new

    # -- what the worker tells us --------------------------------------------

    def on_message(self, msg: list[Any], now: float) -> None:
        kind = msg[0]
        if kind == "ready" and self.state is State.STARTING:
            self._to(State.IDLE)
        elif kind == "exit":
            if self.state in TAKING_WORK:
                self.stop_reason = str(msg[1])
                self._to(State.DRAINING)
            self.said_leaving = True
        elif kind == "fatal":
            self.fatal = str(msg[1])[:MAX_FATAL]

    # -- what its scoreboard report says (read by the master on its own clock) ----

    def on_start(self, job: CurrentJob) -> None:
        self.job = job
        if self.state in (State.IDLE, State.STARTING):
            self._to(State.BUSY)

    def on_jobs(self, jobs: dict[int, CurrentJob]) -> None:
        """A worker running several jobs: the ones it holds now."""
        self.jobs = jobs
        running = [j for j in jobs.values() if j.since]
        if running:
            self.on_start(min(running, key=lambda j: j.since))
        elif jobs:
            self.job = next(iter(jobs.values()))  # a suspect waiting to run alone
        else:
            self.on_end()

    def refresh_jobs(self) -> bool:
        """Reads the jobs its run table holds, if it moved since the last read; an entry out of
        range is left out (the header, read on every look, is what is judged). False when the
        table could not be read whole (being written): ``jobs`` is as last read."""
        if self.runs is None:
            return True
        gen = self.runs.generation()[0]
        if gen == self.jobs_read:
            return True
        entries = self.runs.entries()
        if entries is None:
            return False  # being written: the next look
        jobs = {}
        for e in entries:
            if not all(math.isfinite(x) and 0 <= x < 2 ** 40 for x in (e.started, e.soft, e.hard)):
                continue
            old = self.jobs.get(e.index)
            if old is not None and old.run == e.run and (old.since or not e.started):
                jobs[e.index] = old
                continue
            jobs[e.index] = CurrentJob(id=e.job_id, token=e.token, handler=e.handler, attempt=e.attempt,
                                       since=e.started, soft=e.soft or None, hard=e.hard or None,
                                       partition=e.partition if e.partition >= 0 else None, run=e.run,
                                       adaptive=bool(e.adaptive), index=e.index)
        self.jobs_read = gen
        self.on_jobs(jobs)
        return True

    def overdue(self, at: float) -> list[CurrentJob]:
        """Its jobs past their hard limit (and the grace a job among several has) at ``at``."""
        return [j for j in self.jobs.values() if j.since and j.hard and j.since + j.hard + self.grace <= at]

    def on_end(self) -> None:
        self.job = None
        if self.state is State.BUSY:
            self._to(State.IDLE)

    # -- what we do to it ------------------------------------------------------

    def drain(self, reason: str) -> None:
        """Finish the current job, take no more, exit. SIGTERM interrupts an idle wait; the
        channel message reaches a worker whose job ignored or blocked SIGTERM."""
        if self.state not in TAKING_WORK:
            return
        self.stop_reason = reason
        self._to(State.DRAINING)
        self.hold_to_word()

    def hold_to_word(self) -> None:
        """It said it leaves: make sure it does, even if it was its job that said so (the
        worker's own loop then stops after that job instead of taking the next one)."""
        try:
            self.sock.send(b"drain")
        except OSError:
            pass  # gone already, or its channel is: the signal still applies
        _signal(self.pid, signal.SIGTERM)

    def lose_channel(self) -> bool:
        """Its job closed the worker's end of the channel: the worker settles that job and
        exits by itself; until then we still know the job, so its hard limit holds. True
        if this changed anything (the worker was still taking work)."""
        if self.state not in TAKING_WORK:
            return False
        self.stop_reason = "channel_lost"
        self._to(State.DRAINING)
        return True

    def recycle(self, reason: str) -> None:
        """The worker asked to retire (max_jobs, max_age) and was allowed: it exits by itself."""
        if self.state in TAKING_WORK:
            self.stop_reason = reason
            self._to(State.DRAINING)
        # (not said_leaving: a "go" that reached the worker after it gave up waiting is read
        # as a drain after its next job, so one more run may start, as for any drain)

    def hard_deadline(self) -> float | None:
        if self.state is State.STOPPING:
            return None
        if self.runs is not None:
            return self.kill_at
        if self.job and self.job.hard:
            return self.job.since + self.job.hard
        return None

    def kill(self, reason: str, **detail: Any) -> None:
        """SIGKILL the worker and its whole tree, the very tree its memory was measured on, so
        no grandchild outlives it: not one in a session of its own, nor an orphan it adopted."""
        if self.state is State.STOPPING:
            return
        self.stop_reason = reason
        self.stop_detail = detail
        self._to(State.STOPPING)
        # the run ends here, not when the master gets round to reaping it: its job's time
        # and a limit's lateness are counted to this instant (a caller that stopped the
        # tree before, all at once with others, has set it already)
        self.killed_at = self.killed_at or time.monotonic()
        kill_tree(self.pid, pidfd=self.pidfd)

    def stop_now(self) -> None:
        """SIGSTOP it and its process group without waiting (its run ends now): a caller about
        to kill many stops them all first, so no kill waits for the ones before it."""
        if self.state is not State.STOPPING and self.killed_at is None:
            self.killed_at = time.monotonic()
            stop_now(self.pid, self.pidfd)

    def run_time(self, now: float) -> float | None:
        """How long its current job ran: to the kill that stopped it, else to ``now``."""
        if self.job is None:
            return None
        return (self.killed_at or now) - self.job.since

    def close(self) -> None:
        self.sock.close()
        os.close(self.pidfd)

    def snapshot(self, now: float) -> dict[str, Any]:
        job = _job_view(self.job, now) if self.job else None
        out = {"pid": self.pid, "index": self.index, "state": self.state.value,
               "uptime": round(now - self.started, 3), "jobs_done": self.jobs_done,
               "rss": self.rss or rss_bytes(self.pid), "peak_rss": self.peak_rss,
               "job": job, "stop_reason": self.stop_reason, "generation": self.generation}
        if self.runs is not None:
            self.refresh_jobs()
            out["slots"] = self.runs.slots
            out["jobs"] = [_job_view(j, now) for j in sorted(self.jobs.values(), key=lambda j: j.index)]
            if self.loop_blocked:
                since, index = self.loop_blocked
                by = self.jobs.get(index)
                out["loop_blocked"] = {"seconds": round(max(now - since, 0.0), 3), "job": by.id if by else None,
                                       "handler": by.handler if by else None}
        return out


def _job_view(job: CurrentJob, now: float) -> dict[str, Any]:
    view: dict[str, Any] = {"id": job.id, "handler": job.handler, "attempt": job.attempt,
                            "seconds": round(now - job.since, 3) if job.since else 0.0}
    if job.partition is not None:
        view["partition"] = job.partition
    if not job.since:
        view["waiting_alone"] = True  # a suspect: it runs once the others have ended
    return view


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes(pid: int) -> int | None:
    """Resident set size from /proc/PID/statm: about 20 µs, cheap enough to call often."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


def describe_exit(status: int) -> tuple[str, dict[str, Any]]:
    """("killed by SIGSEGV", {"signal": "SIGSEGV"}) or ("exit code 3", {"exit_code": 3})."""
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:  # a real-time signal (SIGRTMIN+n) has no name in the enum
            name = f"signal {-code}"
        return f"killed by {name}", {"signal": name}
    return f"exit code {code}", {"exit_code": code}
