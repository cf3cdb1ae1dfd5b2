"""Runs in the worker child: one job, from the reserve's reply to the call that settles it.

A ``JobRun`` holds everything of one job (its token, lane, limits, clock and report), so
that a worker could one day hold several at once (issue 23); what the runs of one worker
share (its spec, handlers, learnt limits, job count) stays on the worker, its ``host``.
``prepare()`` is what every pool does before a job runs (limits, the report to the master,
the payload and the handler checked); ``execute()`` runs it: in this process here, handed to
the program over the line protocol in a command pool (``command.CommandRun``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import math
import random
import signal
import time
import traceback
from collections.abc import Callable
from typing import Any, Protocol

import redis

from governor import context
from governor.context import JobContext
from governor.errors import SoftTimeLimitExceeded
from governor.log import fields
from governor.protocol.client import JOB_ID, MAX_TIMEOUT
from governor.protocol.keys import QueueKeys
from governor.protocol.limits import RateLimited
from governor.protocol.records import Reserved
from governor.protocol.scripts import Call
from governor.supervise.channel import WorkerEnd
from governor.supervise.child import WorkerSpec
from governor.supervise.handlers import HandlerError, HandlerRegistry, Payload
from governor.supervise.handlerstats import ADAPTIVE_REFRESH, runtimes_kept
from governor.untrusted import bounded

log = logging.getLogger("governor.worker")

MAX_EPOCH_MS = 2 ** 53  # a time in a job's record beyond this is no time Redis wrote
_MAX_TRACEBACK = 16 * 1024


class Host(Protocol):
    """What a run reads from (and counts on) the worker that runs it."""

    spec: WorkerSpec
    channel: WorkerEnd
    id: str
    registry: HandlerRegistry
    redis: Any
    learnt: LearntLimits
    jobs_run: int
    in_job: bool  # the soft-limit alarm interrupts job code only while this is set
    rang: bool  # told the master we are busy since we last waited for work
    done_ttl_ms: int
    title: Callable[[str], None]


class LearntLimits:
    """The hard limits learnt from each handler's runs (timeout.adaptive), per lane, as the
    masters last wrote them (handlers.lua); read again at most every ADAPTIVE_REFRESH, and
    only while jobs run. One per worker: every run of it shares what was read."""

    def __init__(self) -> None:
        self._by_lane: dict[str, tuple[float, dict[str, float]]] = {}  # lane -> (read at, limits)

    def get(self, client: Any, lane: str, handler: str, adaptive: Any) -> float | None:
        """``handler``'s learnt limit in seconds. None: not learnt yet (too few samples),
        fallen back, or Redis did not answer."""
        at, limits = self._by_lane.get(lane, (-math.inf, {}))
        if time.monotonic() - at >= ADAPTIVE_REFRESH:
            try:
                raw = client.hgetall(lane)
                # each value as the masters write it (milliseconds), else ignored: the hash is
                # anyone's to write, and a 400-digit value overflowed the division below
                low, high = (adaptive.min, adaptive.max) if adaptive else (0.001, MAX_TIMEOUT)
                limits = {}
                for k, v in raw.items():
                    seconds = int(v) / 1000.0 if v.isdigit() and len(v) <= 15 else 0.0
                    if seconds > 0:  # (0: fallen back to the configured limits)
                        limits[k.decode(errors="replace")] = min(max(seconds, low), high)
            except (redis.RedisError, ValueError):
                pass  # the limits known before (or the configured ones) until the next look
            self._by_lane[lane] = (time.monotonic(), limits)
        return limits.get(handler) or None


class JobRun:
    """One job leased to the worker: run it with ``run()``, which returns the call that
    settles it (the worker sends that with its next reserve)."""

    # appended to a malformed record's error: a Python worker cannot tell its settings
    MALFORMED = ", so its settings are unknown"
    __slots__ = ("host", "lane", "token", "job", "handler", "number", "soft", "hard", "payload", "func", "started",
                 "holder")

    def __init__(self, host: Host, reply: list[Any], lane: QueueKeys) -> None:
        self.host = host
        self.lane = lane  # where the job lives: its settle goes there
        self.token: str = reply[-1]
        self.job = Reserved.from_reply(reply[:4], self.token)
        meta = self.job.meta
        self.handler = meta.get("handler") if isinstance(meta.get("handler"), str) else "?"
        self.number = host.jobs_run + 1  # this worker's how-many-th job
        self.soft: float | None = None
        self.hard: float | None = None
        self.payload: Payload | None = None
        self.func: Any = None
        self.started = 0.0
        self.holder = host.id  # whom the lease names (with jobs_per_worker > 1: the slot's id)

    def run(self) -> Call:
        """Prepares the job and, when it may run, executes it."""
        return self.prepare() or self.execute()

    # -- before the job runs ---------------------------------------------------

    def prepare(self) -> Call | None:
        """Limits, the report to the master, the payload and its handler checked; the call
        that dead-letters the job when it cannot run, else None (``payload`` is set)."""
        host, job = self.host, self.job
        self.soft, self.hard, adaptive = self.limits()
        self._report_start(self.queued_for(), adaptive)
        self.announce()
        host.jobs_run += 1
        self.started = time.monotonic()
        try:
            self.payload = Payload.parse(job.payload, host.spec.max_payload)
            if job.meta.get("malformed"):
                raise HandlerError("malformed", f"malformed job: its record in Redis is unusable "
                                                f"({job.meta['malformed']}){self.MALFORMED}")
            self.admit(self.payload)
        except HandlerError as exc:
            self.over()
            self.report_end(exc.reason, time.monotonic() - self.started)
            return self.fail(self.error(exc.reason, str(exc)), "dead", 0, exc.reason)
        return None

    def limits(self) -> tuple[float | None, float | None, bool]:
        """(soft, hard seconds, whether hard was learnt). A per-job timeout replaces the hard
        limit and scales the soft one; else a limit learnt from the handler's runs
        (timeout.adaptive) does the same; else the configured ones apply."""
        timeout = self.host.spec.queue.settings.timeout
        soft, hard = timeout.soft, timeout.hard
        override = bounded(self.job.meta.get("timeout"), 0.001, MAX_TIMEOUT)  # (as enqueue allows)
        learnt = False
        if not (isinstance(override, (int, float)) and override > 0) and timeout.adaptive:
            override = self.host.learnt.get(self.host.redis, self.lane.adaptive, self.handler, timeout.adaptive)
            learnt = override is not None
        if isinstance(override, (int, float)) and override > 0:
            soft = override * (soft / hard) if soft and hard else None
            return soft, float(override), learnt
        return soft, hard, False

    def queued_for(self) -> float | None:
        """Seconds the job waited in the queue since it was ready, if its record says."""
        meta = self.job.meta
        ready = bounded(meta.get("ready_at") or meta.get("enqueued_at"), 0, MAX_EPOCH_MS)
        started_at = bounded(meta.get("started_at"), 0, MAX_EPOCH_MS)
        return max(0.0, (started_at - ready) / 1000.0) if ready is not None and started_at is not None else None

    def announce(self) -> None:
        """The process title says which job runs."""
        job_id = self.job.id
        self.host.title(f"job {job_id if JOB_ID.fullmatch(job_id) else _printable(job_id)} {self.handler}")

    def admit(self, payload: Payload) -> None:
        """HandlerError unless the handler may run here: resolved among app.handlers."""
        self.func = self.host.registry.resolve(payload.handler)

    # -- running it ------------------------------------------------------------

    def execute(self) -> Call:
        """Runs the handler in this process under the soft limit's alarm, in its context."""
        host, job, payload = self.host, self.job, self.payload
        assert payload is not None
        context._enter(JobContext(id=job.id, queue=host.spec.queue.name, handler=payload.handler,
                                  attempt=job.attempts, fencing_token=job.fencing_token,
                                  deadline=time.time() + self.hard if self.hard else None))
        try:
            try:
                host.in_job = True
                if self.soft:
                    signal.setitimer(signal.ITIMER_REAL, self.soft)
                result = self.func(*payload.args, **payload.kwargs)
                if inspect.iscoroutine(result):  # an async def handler, one job at a time
                    result = _event_loop().run_until_complete(result)
            finally:
                host.in_job = False  # (first: an alarm from now on interrupts nothing)
                signal.setitimer(signal.ITIMER_REAL, 0)
                self.over()
        except (Exception, SystemExit, SoftTimeLimitExceeded) as exc:
            return self.failed(exc, time.monotonic() - self.started)
        return self.succeeded(result, time.monotonic() - self.started)

    def failed(self, exc: BaseException, seconds: float, reason: str | None = None) -> Call:
        """The settle of a run whose handler raised ``exc`` after ``seconds``."""
        if isinstance(exc, RateLimited):
            # not the job's failure: it goes back, due when the limiter will have a start
            self.report_end("throttled", seconds)
            return self.fail(None, "throttle", max(1, int(exc.retry_after * 1000)), "throttled")
        reason = reason or ("timeout_soft" if isinstance(exc, SoftTimeLimitExceeded) else "exception")
        self.report_end(reason, seconds)
        tb = "".join(traceback.format_exception(exc))[-_MAX_TRACEBACK:]
        error = self.error(reason, "".join(traceback.format_exception_only(type(exc), exc)).strip(),
                           traceback=tb, seconds=round(seconds, 3))
        log.debug("job %s failed: %s", self.job.id, error["error"])
        return self.fail(error, "retry", self.backoff_ms(), reason)

    def succeeded(self, result: Any, seconds: float) -> Call:
        """The settle of a run whose handler returned ``result`` after ``seconds``."""
        job, spec = self.job, self.host.spec
        self.report_end("ok", seconds)
        log.debug("job %s done in %.3fs", job.id, seconds)
        text, note = _result_json(result, spec.max_result)
        if note:
            log.warning("job %s: result not kept: %s", job.id, note,
                        extra=fields(queue=spec.queue.name, job=job.id, reason="result_dropped"))
        return self.ack(text, note, seconds)

    # -- the report to the master ----------------------------------------------

    def _report_start(self, wait: float | None, adaptive: bool) -> None:
        """What the master must know of the run (to enforce its hard limit, requeue it if we
        die, show it): written to our scoreboard slot, which the master reads on its own clock.
        No message, so no wake-up of the master per job; only a worker that was idle rings
        (the master then looks every 50 ms while any worker is busy)."""
        host = self.host
        board = host.spec.board
        if board is None:
            return
        board.start_run(host.spec.slot, self.number, self.job.id, self.token, self.handler, self.job.attempts,
                        self.soft, self.hard, self.lane.partition, wait, adaptive)
        if not host.rang:
            host.rang = True
            host.channel.send("busy")

    def report_end(self, outcome: str, seconds: float) -> None:
        if self.host.spec.board is not None:
            self.host.spec.board.finish_run(self.host.spec.slot, outcome, seconds)

    def over(self) -> None:
        """Nothing of the job runs any more: its lease no longer needs guarding (the settle that
        follows is fenced by the token)."""
        context._enter(None)
        if self.host.spec.board is not None:
            self.host.spec.board.end(self.host.spec.slot)

    # -- the outcome -> the settle call ----------------------------------------

    def ack(self, text: str, note: str, seconds: float) -> Call:
        """The call that settles the job as done: ``text`` its result as JSON ('' when not
        kept, ``note`` saying why)."""
        spec = self.host.spec
        assert self.payload is not None
        return self.lane.ack(self.job.id, self.token, self.holder, self.host.done_ttl_ms, text,
                             int(seconds * 1000), note, wake=spec.rules.global_concurrency > 0,
                             runtimes=(self.payload.handler, runtimes_kept(spec.queue.settings.timeout.adaptive)))

    def fail(self, error: dict[str, Any] | None, mode: str, delay_ms: int, reason: str) -> Call:
        """The call that settles the job as failed (``mode``: retry, dead, throttle, requeue)."""
        return self.lane.fail(self.job.id, self.token, self.holder, error, mode, delay_ms, reason,
                              self.host.spec.queue.settings.retry.max)

    def backoff_ms(self) -> int:
        """Capped exponential backoff with equal jitter, so retries of a burst spread out."""
        policy = self.host.spec.queue.settings.retry
        delay = min(policy.max_backoff, policy.backoff * (2 ** min(max(self.job.attempts - 1, 0), 64)))
        return int((delay / 2 + random.uniform(0, delay / 2)) * 1000)

    def error(self, reason: str, message: str, **extra: Any) -> dict[str, Any]:
        """The entry the job's record keeps for this attempt's failure."""
        entry = {"attempt": self.job.attempts, "reason": reason, "error": message, "worker": self.holder, **extra}
        return {k: _clean(v) if isinstance(v, str) else v for k, v in entry.items()}


@functools.cache
def _event_loop() -> asyncio.AbstractEventLoop:
    """The worker's one event loop for ``async def`` handlers (one job per process): kept from
    job to job, so what a module binds to a loop (a connection pool) lives as long as the
    worker; the soft limit's alarm interrupts it like any code."""
    return asyncio.new_event_loop()


def _printable(text: str) -> str:
    """An id or name shown in a log line or a process title: escapes, never raw bytes."""
    return ascii(text)[1:-1][:200]


def _clean(text: str) -> str:
    """Valid UTF-8 whatever the text holds (lone surrogates from os.listdir, say)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _result_json(result: Any, limit: int) -> tuple[str, str]:
    """(the result as JSON, '') or ('', why it is not kept): never dropped without a word."""
    if result is None:
        return "", ""
    try:
        text = json.dumps(result, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        return "", _clean(f"not JSON-serialisable: {type(exc).__name__}: {exc}"[:500])
    if len(text) > limit:
        return "", f"{len(text)} bytes of JSON, over limits.max_result ({limit} bytes)"
    return text, ""
