"""Runs in the worker child: a command pool's worker with ``protocol: jsonl`` and
``jobs_per_worker: N`` > 1, which keeps up to N jobs in its program at once.

The loop is the one of every worker that runs several jobs (flight.py: one round trip settles
every finished job and reserves for every free slot; each job its own lease, limits and
run-table entry); what differs is where a job runs. ``Program`` is that place: a thread of the
worker's own feeds the program its job lines (command.py's ``Child``: never a blocking write)
and reads its answers, matched by ``id`` in any order, and hands each finished run back to the
control thread, which settles it. Only that thread touches the program until the worker lets
go of it (``_let_go``), so the count of bytes the jobs pipe took stays exact.

Limits: at a job's soft limit its program gets ``{"id", "soft_timeout": true}``; at its hard
limit nothing can be taken back from a program, so the master kills the worker's tree
``timeout.grace`` later (that job charged ``timeout_hard``, its neighbours requeued uncharged,
as for any worker running several jobs); an answer that comes after the hard limit, within the
grace, is still charged ``timeout_hard``.

A program that breaks the protocol or dies with jobs in flight costs no job its place:

- an answer of a job in flight that is not well formed (no ``"ok": true|false``) fails that
  job (retried, charged); the others finish, and the program is replaced after them;
- a program that exits (or closes a pipe), or a line that names no job in flight (not JSON,
  an unknown or repeated id), cannot be pinned on one job: the program is killed and each job
  it held is settled as a crash of a worker running several: a job whose line it never read
  is requeued uncharged (it never ran); if it read several, each goes back uncharged as a
  *suspect* that runs alone next time; if it read one, that one is charged. Then the worker
  is replaced. Answers that arrived before are kept.

Drain and recycling finish every job in flight first (the loop's), and only then is the
program sent ``stop_signal``.
"""

from __future__ import annotations

import collections
import json
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from governor.errors import SoftTimeLimitExceeded
from governor.log import fields
from governor.protocol.keys import QueueKeys
from governor.protocol.scripts import Call
from governor.supervise.command import Child, CommandWorker, admit, describe, job_line
from governor.supervise.flight import FlightWorker, log
from governor.supervise.flightrun import FlightRun
from governor.supervise.handlers import Payload
from governor.supervise.jobrun import _result_json

WAIT = 0.5  # seconds between two looks at a program that is quiet (has it exited?)

# what became of a run, besides an answer (its ``problem``)
UNDELIVERED, CHARGED, SUSPECT = "undelivered", "charged", "suspect"

class CommandFlightWorker(CommandWorker, FlightWorker):
    """A command pool's worker with several jobs in its program at once: CommandWorker starts
    and stops the program around FlightWorker's loop (its ``run`` calls this one's through
    ``super()``), and the loop hands every run to the ``Program``."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.program: Program | None = None

    def executor(self, r: FlightRun) -> Any:
        if self.program is None:
            assert self.child is not None
            self.program = Program(self, self.child, self.inbox.put)
        return self.program

    def flight_run(self, reply: list[Any], lane: QueueKeys, index: int) -> FlightRun:
        return CommandFlightRun(self, reply, lane, index, self.table)

    def _let_go(self) -> None:
        if self.program is not None:
            self.program.stop()

class CommandFlightRun(FlightRun):
    """One job of several in the program: its line, and its answer (``outcome``: the answer or
    None, what went wrong or None, seconds)."""

    MALFORMED = ""
    __slots__ = ("line_at",)
    host: CommandFlightWorker

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.line_at = -1  # where its line starts in the bytes sent to the program

    def queued_for(self) -> float | None:
        return None  # (not reported by command pools)

    def admit(self, payload: Payload) -> None:
        admit(self.host, payload)

    def interrupt(self, exc_type: type[BaseException]) -> None:
        """At the soft limit the program is told (that job alone); at the hard limit nothing
        can be taken back from it: the master kills the tree after ``timeout.grace``."""
        if exc_type is SoftTimeLimitExceeded:
            self.timed_out = "timeout_soft"
            if self.host.program is not None:
                self.host.program.soft(self)
        else:
            self.timed_out = "timeout_hard"

    def settle(self) -> Call:
        assert self.outcome is not None
        answer, problem, seconds = self.outcome
        if problem is not None:
            kind, message = problem
            if kind == UNDELIVERED:  # it never ran: back where it was, nothing counted
                return self.fail(None, "requeue", 0, "not_delivered")
            self.report_end("other", seconds)
            error = self.error("protocol_error", message, seconds=round(seconds, 3))
            if kind == SUSPECT:
                return self.fail(error, "suspect", 0, "protocol_error")
            return self.fail(error, "retry", self.backoff_ms(), "protocol_error")
        if self.timed_out == "timeout_hard":
            self.report_end("timeout_hard", seconds)
            error = self.error("timeout_hard", f"answered after its hard time limit ({self.hard:g}s)",
                               seconds=round(seconds, 3))
            return self.fail(error, "retry", self.backoff_ms(), "timeout_hard")
        if answer.get("ok") is True:
            self.report_end("ok", seconds)
            text, note = _result_json(answer.get("result"), self.host.spec.max_result)
            return self.ack(text, note, seconds)
        self.report_end("exception", seconds)
        message = str(answer.get("error") or "the program said the job failed")[:16384]
        error = self.error("exception", message, seconds=round(seconds, 3))
        return self.fail(error, "dead" if answer.get("retry") is False else "retry", self.backoff_ms(), "exception")

class Program:
    """Where a command pool's runs go (the loop's executor): the program, fed their lines and
    read for their answers by a thread of its own, which hands each finished run to ``done``.

    The control thread only queues orders (a job to send, a soft limit, stop) and wakes the
    thread through a pipe; everything that touches the program happens on the thread. What it
    says of the worker (``broken``, ``undelivered``, ``took_jobs``) is set before the runs it
    concerns are handed back, so the loop reads it when it settles them."""

    def __init__(self, host: CommandFlightWorker, child: Child, done: Callable[[FlightRun], None]) -> None:
        self.host, self.child, self.done = host, child, done
        self.lock = threading.Lock()
        self.orders: collections.deque[tuple[str, CommandFlightRun | None, Any]] = collections.deque()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        child.sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        self.runs: dict[str, CommandFlightRun] = {}  # job id -> its run, its line sent
        self.dead: str | None = None  # why the program takes no more lines
        self.thread = threading.Thread(target=self._serve, name="governor-program", daemon=True)
        self.thread.start()

    # -- the control thread's side ------------------------------------------------------

    def submit(self, run: CommandFlightRun) -> None:
        self._order("job", run, job_line(run))

    def soft(self, run: CommandFlightRun) -> None:
        self._order("soft", run, None)

    def stop(self) -> None:
        """The thread ends (nothing is in flight by now, or the worker is going anyway)."""
        self._order("stop", None, None)
        self.thread.join(10.0)
        try:
            self.child.sel.unregister(self.wake_r)
        except (KeyError, ValueError):
            pass
        os.close(self.wake_r)
        os.close(self.wake_w)

    def _order(self, what: str, run: CommandFlightRun | None, line: Any) -> None:
        with self.lock:
            self.orders.append((what, run, line))
        try:
            os.write(self.wake_w, b"!")
        except BlockingIOError:
            pass  # (woken already)

    # -- the thread -----------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            try:
                if not self._turn():
                    return
            except Exception as exc:  # a bug of ours: no run may wait for ever on a thread that died
                log.exception("worker %s: the thread feeding the program failed", self.child.name,
                              extra=fields(queue=self.child.queue, worker_pid=os.getpid(), reason="protocol_error"))
                if self.dead is None:
                    self._crash(f"the worker failed to feed the program ({type(exc).__name__}: {exc})", "")

    def _turn(self) -> bool:
        """One turn: the orders carried out, the answers taken, the program watched; False
        when told to stop."""
        child = self.child
        while True:
            with self.lock:  # (one at a time: a failure loses no order behind it)
                if not self.orders:
                    break
                what, run, line = self.orders.popleft()
            if what == "stop":
                return False
            assert run is not None
            if what == "job":
                self._hand(run, line)
            elif self.runs.get(run.job.id) is run:
                child.send({"id": run.job.id, "soft_timeout": True})
        if self.dead is None:
            why = self._answers()
            during = ""
            if why is None and self._gone():
                why, during = self._death()
            if why is not None:
                self._crash(why, during)
        child.pump(WAIT)
        return True

    def _hand(self, run: CommandFlightRun, line: dict[str, Any]) -> None:
        """Sends the job's line; a program already gone never gets it (requeued uncharged)."""
        if self.dead is not None:
            host = self.host
            host.undelivered = True
            host.broken = (f"the program {host._gone()} before it read job {run.job.id}: not handed over, "
                           "requeued uncharged")
            self._end(run, None, (UNDELIVERED, host.broken))
            return
        self.runs[run.job.id] = run  # (first: whatever happens next, it is settled with the others)
        run.line_at = self.child.send(line)

    def _end(self, run: CommandFlightRun, answer: dict[str, Any] | None, problem: tuple[str, str] | None) -> None:
        run.outcome = (answer, problem, time.monotonic() - run.started)
        self.done(run)

    def _answers(self, lenient: bool = False) -> str | None:
        """Settles the runs the program answered; why the program broke the protocol in a way
        no single job can be blamed for, if it did (``lenient``: it is being replaced anyway,
        and only good answers count)."""
        results = self.child.results
        while results:
            line = results.pop(0)
            try:
                answer = json.loads(line)
            except (ValueError, RecursionError):
                if lenient:
                    continue
                return f"not a JSON line on the results pipe: {line[:200]!r}"
            job_id = answer.get("id") if isinstance(answer, dict) else None
            run = self.runs.pop(job_id, None) if isinstance(job_id, str) else None
            if run is None:
                if lenient:
                    continue
                return f"an answer for no job in flight: {line[:200]!r}"
            self.host.took_jobs += 1
            if isinstance(answer.get("ok"), bool):
                self._end(run, answer, None)
                continue
            # that job's fault alone: it is charged, the others finish, the program is replaced
            why = f"an answer without \"ok\": true|false: {line[:200]!r}"
            self.host.broken = why
            self._end(run, None, (CHARGED, f"the program broke the protocol: {why}"))
        return None

    def _gone(self) -> bool:
        child = self.child
        return child.results_closed or child.jobs_closed or not child.alive()

    def _death(self) -> tuple[str, str]:
        """What the program did: exited (its last answers read first), or closed a pipe; and
        how a lone job's error says it."""
        child = self.child
        try:  # a pipe closes when its program dies: say which it was
            child.proc.wait(0.2)
        except subprocess.TimeoutExpired:
            return f"the program closed its {'results' if child.results_closed else 'jobs'} pipe", ""
        child.pump(0)
        broke = self._answers()
        if broke is not None:
            return broke, ""
        return f"the program {describe(child.proc.returncode)}", " during the job"

    def _crash(self, why: str, during: str) -> None:
        """The program cannot go on: killed, and every job it held settled as a crash of a
        worker running several (see the module's docstring)."""
        host, child = self.host, self.child
        self.dead = why
        if child.alive():  # (none of its jobs may run on while they are requeued)
            child.stop(signal.SIGKILL, 0)
        self._answers(lenient=True)
        runs = list(self.runs.values())
        self.runs.clear()
        read = {r for r in runs if child.read_from(r.line_at)}
        host.took_jobs += len(read)
        if runs and not read:
            host.undelivered = True
            host.broken = f"{why} before it read its jobs: not handed over, requeued uncharged"
        else:
            host.broken = why
        if read:
            log.error("worker %s: %s with %d job(s) in flight, %d read: %s", child.name, why, len(runs), len(read),
                      "each requeued uncharged as a suspect, to run alone" if len(read) > 1 else "that job charged",
                      extra=fields(queue=child.queue, worker_pid=os.getpid(), reason="protocol_error"))
        for r in runs:
            if r not in read:
                self._end(r, None, (UNDELIVERED, why))
            elif len(read) > 1:
                self._end(r, None, (SUSPECT, f"{why} with {len(read)} jobs in flight: not charged, "
                                             "this job runs alone next"))
            else:
                self._end(r, None, (CHARGED, f"the program broke the protocol: {why}{during}"))
