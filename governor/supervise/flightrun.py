"""Runs in the worker child (jobs_per_worker > 1): one job among several in flight, and the two
places such a job runs: a pool of threads (plain functions) and an asyncio event loop
(``async def`` handlers).

A ``FlightRun`` is a ``JobRun`` whose lease is held by one slot of the worker (``<worker
id>~<n>``) and whose report is that slot's entry in the run table (runtable.py) instead of
the worker's own. Everything that touches the worker's state (the scoreboard, the Redis
connection, the settle call) happens on the worker's control thread; a job's thread or task
only calls the handler and hands back what it returned or raised. Time limits are the
control thread's too: at the soft limit ``SoftTimeLimitExceeded`` is thrown into that job
alone (raised in its thread, or into its task); at the hard limit ``HardTimeLimitExceeded``
the same way (a task is cancelled with it), and the master kills the whole worker if the job
has not ended ``timeout.grace`` later. A thread blocked in C code (``time.sleep``, a socket
read) sees the exception only when that call returns: the master's kill is what bounds it.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import inspect
import queue
import threading
import time
from collections.abc import Callable, Coroutine, Generator, Iterable
from typing import Any

from governor import context
from governor.context import JobContext
from governor.errors import HardTimeLimitExceeded, SoftTimeLimitExceeded
from governor.protocol.keys import QueueKeys
from governor.protocol.scripts import Call
from governor.supervise.jobrun import Host, JobRun
from governor.supervise.runtable import RunTable, slot_id

_SetAsyncExc = ctypes.pythonapi.PyThreadState_SetAsyncExc
_SetAsyncExc.argtypes = (ctypes.c_ulong, ctypes.py_object)
STACK_SIZE = 512 * 1024  # a job thread's stack: enough for deep handlers, a fraction of the default 8 MiB


class FlightRun(JobRun):
    """One job of a worker that runs several: held by slot ``index``."""

    __slots__ = ("index", "table", "suspect", "outcome", "thread", "task", "throw", "timed_out",
                 "lock", "is_async", "due", "kill_at", "run_no", "held")

    def __init__(self, host: Host, reply: list[Any], lane: QueueKeys, index: int, table: RunTable | None) -> None:
        super().__init__(host, reply, lane)
        self.index = index
        self.table = table
        self.holder = slot_id(host.id, index)
        self.suspect = bool(self.job.meta.get("suspect"))
        self.outcome: tuple[Any, BaseException | None, float] | None = None  # (result, raised, seconds)
        self.thread: int | None = None  # the ident of the thread running it (while it runs)
        self.task: asyncio.Task | None = None
        self.throw: BaseException | None = None  # thrown into its task at its next step
        self.timed_out: str | None = None  # 'timeout_soft' or 'timeout_hard' once delivered
        self.lock = threading.Lock()
        self.is_async = False
        self.due: list[tuple[float, type[BaseException]]] = []  # (when, what): soft, then hard
        self.kill_at = 0.0  # when the master kills the worker if this job has not ended (0: never)
        self.run_no = 0  # the worker's number for this run (its run-table entry's)
        self.held = False  # its entry was written before it started (a suspect waiting)

    # -- the report: the slot's entry, not the worker's ---------------------------------

    def _report_start(self, wait: float | None, adaptive: bool) -> None:
        host = self.host
        if self.table is not None:
            if self.held:  # (a suspect that waited to run alone)
                self.table.start(self.index, time.monotonic(), self.soft, self.hard, self.job.attempts, adaptive)
            else:  # held and started in one write
                self.table.hold(self.index, self.run_no, self.job.id, self.token, self.handler, self.lane.partition,
                                len(host.flying), (time.monotonic(), self.soft, self.hard, self.job.attempts, adaptive))
        host.tally.start(wait)
        if not host.rang:  # an idle worker took work: the master looks at it at its busy pace
            host.rang = True
            host.channel.send("busy")

    def announce(self) -> None:
        pass  # the title counts the jobs in flight (the worker's), it names none

    def over(self) -> None:
        pass  # the slot's entry is freed by the worker, when it takes the settle

    def report_end(self, outcome: str, seconds: float) -> None:
        self.host.tally.end(outcome, seconds)

    # -- where it runs ---------------------------------------------------------------------

    def context(self) -> JobContext:
        assert self.payload is not None
        return JobContext(id=self.job.id, queue=self.host.spec.queue.name, handler=self.payload.handler,
                          attempt=self.job.attempts, fencing_token=self.job.fencing_token,
                          deadline=time.time() + self.hard if self.hard else None)

    def settle(self) -> Call:
        """The call that settles the run, from what its handler returned or raised."""
        assert self.outcome is not None
        result, raised, seconds = self.outcome
        if raised is None:
            return self.succeeded(result, seconds)
        if isinstance(raised, HardTimeLimitExceeded) or \
                (self.timed_out == "timeout_hard" and isinstance(raised, asyncio.CancelledError)):
            return self.failed(raised, seconds, "timeout_hard")
        if isinstance(raised, asyncio.CancelledError) and self.timed_out == "timeout_soft":
            return self.failed(raised, seconds, "timeout_soft")
        return self.failed(raised, seconds)

    def interrupt(self, exc_type: type[BaseException]) -> None:
        """Throws ``exc_type`` into the job alone (control thread), if it still runs."""
        self.timed_out = "timeout_soft" if exc_type is SoftTimeLimitExceeded else "timeout_hard"
        if self.task is not None:
            loop = self.task.get_loop()
            loop.call_soon_threadsafe(self._throw_into_task, exc_type)
            return
        with self.lock:
            if self.thread is not None and self.outcome is None:
                _SetAsyncExc(self.thread, exc_type)

    def _throw_into_task(self, exc_type: type[BaseException]) -> None:
        if self.task is not None and not self.task.done():
            self.throw = exc_type()
            self.task.cancel()


class _Thrown:
    """Drives a coroutine so that an exception can be thrown into it where it awaits: the
    task is cancelled, and the cancellation is replaced by ``run.throw`` (its soft or hard
    limit), so the handler sees the limit by name, as a thread's does."""

    def __init__(self, coro: Coroutine[Any, Any, Any], run: FlightRun) -> None:
        self.coro, self.run = coro, run

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, run = self.coro, self.run
        value: Any = None
        exc: BaseException | None = None
        while True:
            try:
                if exc is not None:
                    if isinstance(exc, asyncio.CancelledError) and run.throw is not None:
                        exc, run.throw = run.throw, None
                        task = asyncio.current_task()
                        if task is not None:
                            task.uncancel()
                    step = coro.throw(exc)
                else:
                    step = coro.send(value)
            except StopIteration as stop:
                return stop.value
            value, exc = None, None
            try:
                value = yield step
            except BaseException as e:  # noqa: BLE001 (thrown in by the loop: handed to the job)
                exc = e


class Threads:
    """A pool of up to ``size`` job threads, started as they are needed: a worker whose jobs
    are all ``async def`` starts none."""

    def __init__(self, size: int, done: Callable[[FlightRun], None]) -> None:
        self.size, self.done = size, done
        self.work: queue.SimpleQueue[FlightRun | None] = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []
        self.idle = 0
        self.lock = threading.Lock()

    def submit(self, run: FlightRun) -> None:
        with self.lock:
            start = self.idle == 0 and len(self.threads) < self.size
            if not start:
                self.idle -= 1
        if start:
            t = threading.Thread(target=self._serve, name=f"governor-job-{len(self.threads)}", daemon=True)
            self.threads.append(t)
            _start_small(t, STACK_SIZE)
        self.work.put(run)

    def _serve(self) -> None:
        while True:
            run = self.work.get()
            if run is None:
                return
            self._run(run)
            with self.lock:
                self.idle += 1

    def _run(self, run: FlightRun) -> None:
        assert run.payload is not None
        context._enter(run.context())
        raised: BaseException | None = None
        result = None
        try:
            try:
                with run.lock:
                    run.thread = threading.get_ident()
                result = run.func(*run.payload.args, **run.payload.kwargs)
            finally:
                with run.lock:  # from here on no limit is thrown into this thread
                    run.thread = None
        except BaseException as exc:  # noqa: BLE001 (the job's: its outcome, never the worker's)
            raised = exc
        context._enter(None)
        run.outcome = (result, raised, time.monotonic() - run.started)
        self.done(run)

    def stop(self) -> None:
        for _ in self.threads:
            self.work.put(None)


class EventLoop:
    """The worker's asyncio event loop, on a thread of its own, started with the first
    ``async def`` job."""

    def __init__(self, done: Callable[[FlightRun], None]) -> None:
        self.done = done
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.beat = time.monotonic()  # the loop's last turn seen (a blocked loop shows its age)
        self.pending: collections.deque[FlightRun] = collections.deque()  # submitted, not yet tasks
        self.scheduled = False  # a call to start them is on its way to the loop
        self.shown: tuple[float, int] | None = None  # (blocked since, by slot) as the run table says

    def submit(self, run: FlightRun) -> None:
        if self.loop is None:
            self.loop = asyncio.new_event_loop()
            self.thread = threading.Thread(target=self.loop.run_forever, name="governor-event-loop", daemon=True)
            _start_small(self.thread, STACK_SIZE * 2)
            self.beat = time.monotonic()
            self.loop.call_soon_threadsafe(self._beat)
        # the runs of one round trip wake the loop once, not once each
        self.pending.append(run)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon_threadsafe(self._start_pending)

    BEAT = 0.1  # seconds between the loop's heartbeats

    def _beat(self) -> None:
        self.beat = time.monotonic()
        assert self.loop is not None
        self.loop.call_later(self.BEAT, self._beat)

    def blocker(self, after: float) -> tuple[float, asyncio.Task | None] | None:
        """(since when, the task running) if the loop has not turned for ``after`` seconds:
        sync code in an ``async def`` holds it. Read from the control thread."""
        if self.loop is None or time.monotonic() - self.beat < after:
            return None
        return self.beat, asyncio.current_task(self.loop)  # (the loop's running task, from any thread)

    def watch(self, flying: Iterable[FlightRun], table: RunTable, after: float) -> None:
        """A loop that has not turned for ``after`` seconds is blocked by sync code in the job
        it runs: said in the run table (status and metrics show it, with the job)."""
        runs = [r for r in flying if r.is_async]
        blocked = self.blocker(after) if runs else None
        if blocked is None:
            if self.shown:
                table.blocked(0.0, -1)
            self.shown = None
            return
        since, task = blocked
        index = next((r.index for r in runs if r.task is task), -1)
        if self.shown != (since, index):
            table.blocked(since, index)
            self.shown = (since, index)

    def _start_pending(self) -> None:
        self.scheduled = False  # (first: a run added from now on schedules another call)
        loop = asyncio.get_running_loop()
        while self.pending:
            run = self.pending.popleft()
            run.task = loop.create_task(self._run(run))

    async def _run(self, run: FlightRun) -> None:
        assert run.payload is not None
        context._enter(run.context())
        raised: BaseException | None = None
        result = None
        try:
            result = await _Thrown(run.func(*run.payload.args, **run.payload.kwargs), run)
        except BaseException as exc:  # noqa: BLE001 (the job's outcome)
            raised = exc
        run.outcome = (result, raised, time.monotonic() - run.started)
        self.done(run)

    def stop(self) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)


def _start_small(thread: threading.Thread, stack: int) -> None:
    """Starts ``thread`` with a stack of ``stack`` bytes; threads the job code starts get the
    size they had before."""
    old = threading.stack_size(stack)
    try:
        thread.start()
    finally:
        threading.stack_size(old)


_ASYNC: dict[Any, bool] = {}


def is_async(func: Any) -> bool:
    """Whether a handler runs as a task on the event loop (``async def``)."""
    known = _ASYNC.get(func)
    if known is None:
        known = _ASYNC[func] = inspect.iscoroutinefunction(func)
    return known
