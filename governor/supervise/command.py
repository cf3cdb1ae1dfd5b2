"""Command pools: a worker that runs and governs any program, and the jsonl line protocol.

A command pool's worker is forked by the master like any other (its process group, its
scoreboard slot, its channel), then starts the queue's ``command`` as its child: the master
measures and kills the worker's whole tree, so memory limits, hard timeouts, recycling, crash
backoff and drain work unchanged. The child's stdout and stderr are read line by line into
governor's log, with the worker's fields.

Without a protocol the worker only supervises: the program runs until it exits (the worker
exits with it: a crash loop backs off as for Python workers) or is told to stop
(``stop_signal`` on drain and recycle; the master SIGKILLs what is left after
shutdown_timeout).

With ``protocol: jsonl`` the worker reserves jobs as a Python worker does and hands each to
the program over a pipe of its own (never stdin or stdout, which stay the program's log, so a
stray print cannot corrupt the protocol): one JSON line per job on the descriptor named by
GOVERNOR_JOBS_FD, ``{"id", "handler", "args", "kwargs", "attempt", "deadline_ms"}``, and one
line back per job on GOVERNOR_RESULTS_FD, ``{"id", "ok": true, "result"}`` or ``{"id", "ok":
false, "error", "retry": true|false}``. A soft timeout is the line ``{"id", "soft_timeout":
true}``. A malformed answer, an answer for another job, or a program that closes its results
pipe or exits fails that job (retried) and replaces the worker; a program that exits before it
read its job's line has not run it: the job is requeued uncharged and the worker replaced
(``_handed_over``). Lines are written without ever blocking the reading of the program's
output (``Child._flush``).

With ``jobs_per_worker: N`` > 1 the program gets up to N job lines before it answers, and
its answers are matched by ``id`` in any order: the loop is the one of every worker that runs
several jobs (flight.py), and the program is fed and read by a thread of its own
(commandflight.py).

Runs in: worker (a command pool's).
"""

from __future__ import annotations

import array
import collections
import fcntl
import json
import logging
import os
import selectors
import signal
import subprocess
import termios
import time
from typing import Any

from governor.log import fields
from governor.protocol.keys import QueueKeys
from governor.protocol.scripts import Call
from governor.supervise.channel import WorkerEnd
from governor.supervise.child import WorkerSpec
from governor.supervise.handlers import HandlerError, Payload
from governor.supervise.jobrun import JobRun, _result_json
from governor.supervise.worker import FORWARDED_SIGNALS, Worker

log = logging.getLogger("governor.worker")

MAX_LINE = 1024 * 1024  # bytes of one line from the program (a longer one is cut, and said so)
STOP_WAIT = 0.05  # seconds between looks at a program asked to stop


def describe(code: int) -> str:
    """An exit status as a person reads it."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class ProtocolError(Exception):
    """The program broke the line protocol: its job is retried and the worker replaced."""


class Child:
    """The worker's program: started once, its output logged line by line as it comes."""

    def __init__(self, spec: WorkerSpec, protocol: bool) -> None:
        q = spec.queue
        env = dict(os.environ)
        env.update(dict(q.env))
        env.update(GOVERNOR_QUEUE=q.name, GOVERNOR_WORKER=str(spec.index))
        self.jobs_w = self.results_r = -1
        pass_fds: tuple[int, ...] = ()
        if protocol:
            jobs_r, self.jobs_w = os.pipe()
            self.results_r, results_w = os.pipe()
            env.update(GOVERNOR_JOBS_FD=str(jobs_r), GOVERNOR_RESULTS_FD=str(results_w))
            pass_fds = (jobs_r, results_w)
        self.name = f"{q.name}[{spec.index}]"
        self.queue = q.name
        try:
            self.proc = subprocess.Popen(list(q.command or ()), env=env, cwd=q.cwd, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=pass_fds,
                                         restore_signals=True)
        finally:
            for fd in pass_fds:
                os.close(fd)  # the child's ends: ours must not keep its pipes open
        self.sel = selectors.DefaultSelector()
        self._partial: dict[int, bytes] = {}
        for stream, name in ((self.proc.stdout, "stdout"), (self.proc.stderr, "stderr")):
            assert stream is not None
            os.set_blocking(stream.fileno(), False)
            self.sel.register(stream.fileno(), selectors.EVENT_READ, name)
        if protocol:
            os.set_blocking(self.results_r, False)
            self.sel.register(self.results_r, selectors.EVENT_READ, "results")
            # Never a blocking write: a program busy writing its log while our line waits for
            # room in the pipe would wait for us to read that log, and we for it to read our
            # line (a 200 KB job line against 64 KB pipes: stuck until the hard timeout). A
            # line is queued and written as the pipe takes it, by the same select loop that
            # reads the program's output (one thread: the count of bytes the pipe took, which
            # says what the program read, stays exact, and no thread outlives a dead program).
            os.set_blocking(self.jobs_w, False)
        self._out: collections.deque[memoryview] = collections.deque()  # lines not yet in the pipe
        self.written = 0  # bytes the jobs pipe took since the program started
        self.jobs_closed = False  # the program closed its end of the jobs pipe (or died)
        self.results: list[bytes] = []
        self.results_closed = False

    def pump(self, timeout: float | None) -> None:
        """Reads what is there (waiting up to ``timeout`` for something): output lines are
        logged, result lines kept in ``results``."""
        for key, _ in self.sel.select(timeout):
            fd, what = key.fd, key.data
            if what == "jobs":
                self._flush()
                continue
            if what == "wake":  # (commandflight.py: a line to send, or a stop, was queued)
                while True:
                    try:
                        if not os.read(fd, 4096):
                            break
                    except BlockingIOError:
                        break
                continue
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not data:
                self.sel.unregister(fd)
                rest = self._partial.pop(fd, b"")
                if rest:
                    self._line(what, rest)
                if what == "results":
                    self.results_closed = True
                continue
            buf = self._partial.get(fd, b"") + data
            *lines, buf = buf.split(b"\n")
            if len(buf) > MAX_LINE:
                lines.append(buf[:MAX_LINE])
                buf = b""
            self._partial[fd] = buf
            for line in lines:
                self._line(what, line)

    def _line(self, what: str, line: bytes) -> None:
        if what == "results":
            self.results.append(line)
            return
        text = line.decode("utf-8", "replace").rstrip("\r")
        (log.warning if what == "stderr" else log.info)(
            "%s %s: %s", self.name, what, text,
            extra=fields(worker=self.name, worker_pid=os.getpid(), queue=self.queue, reason=what))

    def send(self, message: dict[str, Any]) -> int:
        """Queues one line for the program; ``pump`` writes it as the pipe takes it. Returns
        where the line starts in the stream of bytes sent to the program (see ``read_from``)."""
        data = (json.dumps(message, separators=(",", ":")) + "\n").encode()
        start = self.written + sum(len(v) for v in self._out)
        self._out.append(memoryview(data))
        self._flush()
        return start

    def _flush(self) -> None:
        """Writes what the jobs pipe takes now, without waiting; watched for room while a
        line remains."""
        while self._out and self.jobs_w >= 0:
            try:
                n = os.write(self.jobs_w, self._out[0])
            except BlockingIOError:
                break
            except BrokenPipeError:  # nobody reads any more: what is left is never delivered
                self.jobs_closed = True
                self._out.clear()
                break
            self.written += n
            self._out[0] = self._out[0][n:]
            if not self._out[0]:
                self._out.popleft()
        if self.jobs_w < 0:
            return
        watched = self.jobs_w in self.sel.get_map()
        if self._out and not watched:
            self.sel.register(self.jobs_w, selectors.EVENT_WRITE, "jobs")
        elif watched and not self._out:
            self.sel.unregister(self.jobs_w)

    def read_from(self, start: int) -> bool:
        """Whether the program read any byte at or after ``start`` from the jobs pipe: what the
        pipe took minus what still sits unread in it (FIONREAD works on the write end, and the
        bytes stay while we hold it, after the program is gone). True when that cannot be told."""
        unread = array.array("i", [0])
        try:
            fcntl.ioctl(self.jobs_w, termios.FIONREAD, unread, True)
        except OSError:
            return True
        return self.written - unread[0] > start

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int, grace: float) -> int | None:
        """``sig`` to the program, then SIGKILL after ``grace``; its exit status."""
        self._out.clear()  # (it takes no more jobs)
        self._flush()
        if self.alive():
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + grace
            while self.alive() and time.monotonic() < deadline:
                self.pump(STOP_WAIT)
            if self.alive():
                self.proc.kill()
        self.pump(0)
        return self.proc.wait()


class CommandWorker(Worker):
    """A worker of a command pool: the program as its child, jobs over the line protocol."""

    def __init__(self, spec: WorkerSpec, channel: WorkerEnd) -> None:
        super().__init__(spec, channel)
        self.protocol = spec.queue.protocol == "jsonl"
        self.child: Child | None = None
        self.broken: str | None = None  # why the program cannot take more jobs
        self.undelivered = False  # ... because it exited before it read its job (not a break)
        self.took_jobs = 0  # jobs the program read

    def run(self) -> int:
        # the program must not start with the signals the master blocked across fork still blocked
        signal.signal(signal.SIGTERM, self._term_handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED_SIGNALS)
        self.child = Child(self.spec, self.protocol)  # a missing program fails here: the pool backs off
        log.info("worker %s started %s (pid %d)", self.child.name, " ".join(self.spec.queue.command or ()),
                 self.child.proc.pid, extra=fields(queue=self.spec.queue.name, worker_pid=os.getpid()))
        try:
            code = super().run() if self.protocol else self._supervise()
            if self.undelivered and not self.took_jobs:
                # dies before it takes a job, every time? The pool backs off, as for a missing
                # program, instead of starting it again at once for ever (its jobs are not charged)
                self.channel.send("fatal", f"the program {self._gone()} before taking its first job")
                return 1
            return code
        finally:
            self._let_go()
            code = self.child.stop(self.spec.queue.stop_signal, self.spec.shutdown_timeout)
            if self.undelivered:
                log.warning("worker %s: %s; replacing it", self.child.name, self.broken,
                            extra=fields(queue=self.spec.queue.name, reason="program_exited"))
            elif self.broken:
                log.error("worker %s: %s; the program %s; replacing it", self.child.name, self.broken,
                          describe(code), extra=fields(queue=self.spec.queue.name, reason="protocol_error"))

    def _let_go(self) -> None:
        """Before the program is stopped: nothing else may touch it any more (a subclass's
        thread that feeds it)."""

    def _supervise(self) -> int:
        """No protocol: the program runs until it exits (so do we, with its status) or until a
        drain or a granted recycle stops it."""
        assert self.child is not None
        self.channel.send("ready")
        self.title("supervising " + os.path.basename((self.spec.queue.command or ("?",))[0]))
        while not self.draining and self.child.alive():
            self.child.pump(0.5)
            if self.channel.drain_requested():
                self.draining = True
            due = self._recycle_due()
            if due and self._may_recycle(due):
                self.channel.send("exit", due)
                return 0
        if self.draining:
            self.channel.send("exit", "drain")
            return 0
        self.child.pump(0)
        code = self.child.proc.wait()
        raise SystemExit(code if code > 0 else 128 - code if code < 0 else 0)

    def _after_job(self) -> bool:
        if self.broken:
            self.draining = True  # (settle this job, take no more: the worker is replaced)
            self.exit_reason = "program_exited" if self.undelivered else "protocol_error"
        return super()._after_job()

    def job_run(self, reply: list[Any], lane: QueueKeys) -> JobRun:
        return CommandRun(self, reply, lane)

    def _handed_over(self, line_at: int) -> bool:
        """Whether the program took the job whose line starts at ``line_at`` on the jobs pipe.

        Handed over means *read*: the program took at least one byte of the line out of the
        pipe. The protocol has no acknowledgement (adding one would break every program
        written to it), and reading is the last thing we can see before the program may act on
        the job. Only a program that has exited is judged, when nothing reads the pipe any
        more: its line written whole into the pipe's buffer but never read (the program exited
        between our write and its read), or refused with EPIPE, is a job that never ran. A
        byte read and the program died: it may have started the job, and a line that kills
        the program as it parses it must reach the dead letters, so that is the program's
        crash, charged. A live program that broke the protocol is charged too (it is replaced
        now, and could still be reading) unless it closed the jobs pipe: then nobody reads."""
        assert self.child is not None
        if self.child.proc.poll() is None and not self.child.jobs_closed:
            return True
        return self.child.read_from(line_at)

    def _gone(self) -> str:
        assert self.child is not None
        code = self.child.proc.poll()
        return "closed its jobs pipe" if code is None else describe(code)

    def _answer(self, job_id: str, soft_at: float | None) -> dict[str, Any]:
        """The program's answer to ``job_id``; ProtocolError if it breaks the protocol."""
        assert self.child is not None
        while True:
            if self.child.results:
                line = self.child.results.pop(0)
                try:
                    answer = json.loads(line)
                except ValueError:
                    raise ProtocolError(f"not a JSON line on the results pipe: {line[:200]!r}") from None
                if not isinstance(answer, dict) or answer.get("id") != job_id:
                    raise ProtocolError(f"an answer for another job (expected id {job_id!r}): {line[:200]!r}")
                if not isinstance(answer.get("ok"), bool):
                    raise ProtocolError(f"an answer without \"ok\": true|false: {line[:200]!r}")
                return answer
            if self.child.results_closed or self.child.jobs_closed or not self.child.alive():
                try:  # a pipe closes when its program dies: say which it was
                    self.child.proc.wait(0.2)
                except subprocess.TimeoutExpired:
                    pipe = "results" if self.child.results_closed else "jobs"
                    raise ProtocolError(f"the program closed its {pipe} pipe") from None
                self.child.pump(0)
                if self.child.results:
                    continue
                raise ProtocolError(f"the program {describe(self.child.proc.returncode)} during the job")
            if soft_at is not None and time.monotonic() >= soft_at:
                soft_at = None
                self.child.send({"id": job_id, "soft_timeout": True})
            wait = 0.5 if soft_at is None else max(0.0, min(0.5, soft_at - time.monotonic()))
            self.child.pump(wait)


def admit(host: CommandWorker, payload: Payload) -> None:
    """HandlerError unless the handler may run: allowed by app.handlers (the program resolves
    it; a job it may not run is never sent)."""
    registry = host.registry
    if not registry.allowed(payload.handler):
        raise HandlerError("not_allowed", f"handler {payload.handler!r} is not allowed by app.handlers "
                                          f"{list(registry.patterns)} (not sent to the program)")


def job_line(run: JobRun) -> dict[str, Any]:
    """The line that hands ``run``'s job to the program."""
    job, payload = run.job, run.payload
    assert payload is not None
    deadline_ms = int((time.time() + run.hard) * 1000) if run.hard else None
    return {"id": job.id, "handler": payload.handler, "args": payload.args, "kwargs": payload.kwargs,
            "attempt": job.attempts, "deadline_ms": deadline_ms}


class CommandRun(JobRun):
    """One job of a command pool: handed to the program as a line, settled by its answer."""

    MALFORMED = ""
    __slots__ = ()
    host: CommandWorker

    def queued_for(self) -> float | None:
        return None  # (not reported by command pools)

    def announce(self) -> None:
        pass  # the title names the job once it goes to the program (execute)

    def admit(self, payload: Payload) -> None:
        admit(self.host, payload)

    def execute(self) -> Call:
        """Hands the job to the program and waits for its answer line."""
        host, job, payload = self.host, self.job, self.payload
        assert host.child is not None and payload is not None
        host.title(f"job {job.id} {payload.handler}")
        line_at = host.child.send(job_line(self))
        try:
            answer = host._answer(job.id, self.started + self.soft if self.soft else None)
        except ProtocolError as exc:
            host.broken = str(exc)
            self.over()
            if not host._handed_over(line_at):
                return self._requeue_undelivered()
            host.took_jobs += 1
            seconds = time.monotonic() - self.started
            self.report_end("other", seconds)
            error = self.error("protocol_error", f"the program broke the protocol: {exc}", seconds=round(seconds, 3))
            return self.fail(error, "retry", self.backoff_ms(), "protocol_error")
        self.over()
        host.took_jobs += 1
        seconds = time.monotonic() - self.started
        if answer.get("ok") is True:
            self.report_end("ok", seconds)
            text, note = _result_json(answer.get("result"), host.spec.max_result)
            return self.ack(text, note, seconds)
        self.report_end("exception", seconds)
        message = str(answer.get("error") or "the program said the job failed")[:16384]
        error = self.error("exception", message, seconds=round(seconds, 3))
        mode = "dead" if answer.get("retry") is False else "retry"
        return self.fail(error, mode, self.backoff_ms(), "exception")

    def _requeue_undelivered(self) -> Call:
        """The job goes back where it was in the queue, its attempt not counted and no error
        recorded (it never ran); the worker is replaced with a fresh copy of the program."""
        host = self.host
        host.undelivered = True
        host.broken = (f"the program {host._gone()} before it read job {self.job.id}: not handed over, "
                       "requeued uncharged")
        if host.spec.board is not None:
            host.spec.board.withdraw_run(host.spec.slot)
        return self.fail(None, "requeue", 0, "not_delivered")
