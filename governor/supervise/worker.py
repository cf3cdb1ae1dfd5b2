"""Runs in the worker child: the loop. Settle the last job and reserve the next in one round
trip, run it (``jobrun.JobRun``), tell the master; wait when there is nothing to take; until
told to stop.

The worker owns nothing the master relies on for safety: the master knows
which job it runs (from ``start`` messages and the lease in Redis) and kills
it from outside when a limit is crossed. The worker's own duties are to run
only allowed handlers, to settle every job it takes exactly once, and to stop
taking jobs when it receives SIGTERM (drain). What happens between fork and the
first job is in ``child.py``.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

import redis
from setproctitle import setproctitle

from governor.errors import SoftTimeLimitExceeded
from governor.identity import worker_id
from governor.log import fields
from governor.protocol import limits
from governor.protocol.connection import connect, disconnect, is_cluster, is_transient
from governor.protocol.keys import ACK_WAKE, QueueKeys
from governor.protocol.records import FailOutcome, NotReplicated, ReserveReply, wait_replicas
from governor.protocol.scripts import Call, hash_tag, run, settle_and_reserve
from governor.supervise import child, proctree
from governor.supervise.channel import WorkerEnd
from governor.supervise.child import WorkerSpec
from governor.supervise.handlers import HandlerRegistry
from governor.supervise.jobrun import MAX_EPOCH_MS, JobRun, LearntLimits, _result_json
from governor.supervise.scoreboard import margin

__all__ = ["FORWARDED_SIGNALS", "MAX_EPOCH_MS", "Worker", "WorkerSpec", "_result_json", "main"]

log = logging.getLogger("governor.worker")

FORWARDED_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP}
_IDLE_WAIT_MAX = 30.0  # seconds a blocked idle worker waits before re-checking (not a poll: ~0.03 cmd/s)
_OURS = FORWARDED_SIGNALS | {signal.SIGALRM, signal.SIGCHLD}  # unblocked again after every job
_REAP_EVERY = 64  # jobs between two looks for adopted zombies (and before every idle wait)
_TURN = 16  # jobs in a row a worker takes from one partition before it lets others have a turn
# the replies read once per job, bound here: reading an enum's member costs ~90 ns, this ~15
_JOB, _LOST, _DEAD = ReserveReply.JOB, FailOutcome.LOST, FailOutcome.DEAD


class _Interrupted(BaseException):
    """SIGTERM while blocked waiting for work: leave the wait at once.

    A BaseException so that redis-py, which wraps Exceptions raised while
    reading a socket into ConnectionError, lets it through unchanged.
    """


def main(spec: WorkerSpec, sock: socket.socket, inherited_fds: Iterable[int],
         runner: Callable[[WorkerSpec, WorkerEnd], Any] | None = None) -> NoReturn:
    """Entry point in the forked child (``child.main``); never returns. ``runner``: the worker
    class (a command pool's, command.CommandWorker; by default this module's Worker)."""
    child.main(spec, sock, inherited_fds, runner or Worker)


class Turns:
    """Partitioned queues: the partition this worker reserves from, while its master holds
    it, and the turns it takes with the others (``_TURN`` jobs in a row at most)."""

    def __init__(self, keys: QueueKeys, count: int, held: Any, hint_key: str,
                 on_redis: Callable[[Callable[[Any], Any]], Any]) -> None:
        self.keys, self.count, self.held, self.hint_key = keys, count, held, hint_key
        self.on_redis = on_redis  # runs a function of the client, riding out Redis outages
        self.current: int | None = None
        self.in_a_row = 0  # jobs taken from it since we came to it

    def lane(self) -> QueueKeys | None:
        """The partition we are on while our master still holds it; None: wait for a hint."""
        if self.current is not None and self.in_a_row >= _TURN:
            self._take_turns()
        if self.current is not None and self.held.held(self.current):
            return self.keys.part(self.current)
        self.current = None
        return None

    def _take_turns(self) -> None:
        """A busy partition must not starve the others this worker could serve: after a run
        of jobs from it, it goes to the back of the hint list and the oldest hint is next (our
        own partition again when nobody else waits)."""
        part = str(self.current)

        def rotate(client: Any) -> Any:
            pipe = client.pipeline(transaction=False)
            pipe.lrem(self.hint_key, 0, part)  # (hints for it ahead of the others: ours now)
            pipe.rpush(self.hint_key, part)
            pipe.lpop(self.hint_key)
            return pipe.execute()[2]

        self.in_a_row = 0
        nxt = self.on_redis(rotate)
        try:
            self.current = int(nxt) if nxt is not None else None
        except ValueError:
            self.current = None

    def leave(self) -> None:
        """Our partition has nothing for us now. The hints for it still queued are stale (we
        took those jobs ourselves, or they are behind their key's head): dropped, or each
        would cost an idle worker a wake-up and an empty reserve. A job enqueued in between
        loses its hint, not its place: its partition is marked touched, and the master sends
        an idle worker at its next lease pass."""
        part, self.current = self.current, None
        if part is not None:
            self.on_redis(lambda client: client.lrem(self.hint_key, 0, str(part)))

    def hinted(self, got: Any) -> None:
        """A hint popped from our master's list: its partition is next, if it is still held
        (hints for partitions our master no longer holds are passed over)."""
        if got:
            try:
                part = int(got[1])
            except ValueError:
                return
            if 0 <= part < self.count and self.held.held(part):
                self.current, self.in_a_row = part, 0


class Worker:
    """One worker's loop. State lives here and nowhere else in the child; each job's own is
    in its JobRun."""

    def __init__(self, spec: WorkerSpec, channel: WorkerEnd) -> None:
        self.spec, self.channel, self.id = spec, channel, worker_id(os.getpid())
        self.keys = QueueKeys(spec.prefix, spec.queue.name)
        self.partitions = spec.queue.partitions if spec.held is not None else None
        self.turns = (Turns(self.keys, self.partitions, spec.held, spec.hint_key, self._on_redis)
                      if self.partitions else None)
        self.learnt = LearntLimits()  # shared by this worker's runs
        self.registry = HandlerRegistry(spec.app.handlers)
        self.settings = spec.queue.settings
        self.lease_ms = int(spec.lease * 1000)
        self.done_ttl_ms = int(self.settings.done_ttl * 1000)
        self._token_prefix, self._tokens = secrets.token_hex(6), 0
        self.draining = False
        self.exit_reason: str | None = None  # why we stop taking work, when not drained (a subclass's)
        self._idle = False
        self.rang = False  # told the master we are busy since we last waited for work
        self.in_job = False  # a job's code runs: the soft limit's alarm interrupts it
        self.jobs_run = 0
        self.started = time.monotonic()
        self._last_recycle_ask, self._asked_at_jobs = -1.0, 0
        self.redis: redis.Redis | None = None
        # Bound once, so "is the handler still ours?" is an identity check after each job.
        self._term_handler, self._alarm_handler = self._on_term, self._on_alarm
        self._channel_inode = os.fstat(channel.sock.fileno()).st_ino

    # -- signals --------------------------------------------------------------

    def _on_term(self, signum: int, frame: Any) -> None:
        self.draining = True
        if self._idle:
            raise _Interrupted()

    def _on_alarm(self, signum: int, frame: Any) -> None:
        if self.in_job:
            raise SoftTimeLimitExceeded()

    # -- main loop ------------------------------------------------------------

    def job_run(self, reply: list[Any], lane: QueueKeys) -> JobRun:
        """The run of one reserved job (a command pool's runs hand it to its program)."""
        return JobRun(self, reply, lane)

    def run(self) -> int:
        """Takes jobs until drained (or recycled, or the channel is lost); the exit code."""
        self.start_up(self._alarm_handler)
        pending: Call | None = None
        reason = "drain"
        try:
            while not self.draining:
                due = self._recycle_due()
                if due:
                    if pending is not None:
                        self._settle_and_reserve(pending, reserve=False)
                        pending = None
                    if self._may_recycle(due):
                        reason = due
                        break
                lane = self.keys if self.turns is None else self.turns.lane()
                if lane is None:  # partitioned, and no partition to look at: wait for a hint
                    if pending is not None:
                        self._settle_and_reserve(pending, reserve=False)
                        pending = None
                    self._wait_for_hint()
                    continue
                reply = self._settle_and_reserve(pending, lane=lane)
                pending = None
                status = reply[0]
                if status != _JOB:
                    if self.turns is not None:
                        self.turns.leave()
                    elif status == ReserveReply.EMPTY:
                        self._wait_for_work(reply[1])
                    elif status == ReserveReply.THROTTLED:  # a start is ours in reply[1] ms
                        self._wait_for_ticket(reply[1])
                    elif status == ReserveReply.AT_LIMIT:  # a settle wakes us
                        self._wait_for_work(-1, "waiting for a slot")
                    elif status == ReserveReply.PAUSED:  # a resume wakes us
                        self._wait_for_work(-1, "paused")
                    continue
                pending = self.job_run(reply, lane).run()
                if not self._after_job():
                    reason = "channel_lost"
                    break
        except _Interrupted:
            disconnect(self.redis)  # a BLPOP reply may be half read
        if pending is not None:
            self._settle_and_reserve(pending, reserve=False)
        self.channel.send("exit", self.exit_reason or reason)
        return 0

    def start_up(self, on_alarm: Any) -> None:
        """Between the fork and the first job: our signal handlers (SIGALRM's is ``on_alarm``),
        the app's imports, our connection; then the master hears we are ready."""
        signal.signal(signal.SIGTERM, self._term_handler)
        signal.signal(signal.SIGALRM, on_alarm)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED_SIGNALS)  # blocked by the master at fork
        self.title("starting")
        for module in self.spec.app.imports:
            # a failure here kills the worker before its first job: the master backs off
            importlib.import_module(module)
        self.redis = _connect(self.spec)
        limits.bind(self.redis, self.spec.prefix, self.spec.limiters)
        self.channel.send("ready")

    def _after_job(self) -> bool:
        """Undo what job code may have done to the worker itself; False when the channel to
        the master is gone (the worker then settles its job and exits).

        Drain must not depend on the job's signal disposition: a handler that set SIGTERM to
        SIG_IGN, or blocked it, gets ours back here, and a drain that arrived meanwhile is
        also on the channel. A job that closed the channel's descriptor (closing "all fds")
        leaves the master blind to what this worker runs next, so the worker stops taking
        work rather than run jobs the master cannot govern. A descriptor reused by something
        else is caught by its inode."""
        if signal.getsignal(signal.SIGTERM) is not self._term_handler:
            signal.signal(signal.SIGTERM, self._term_handler)
        if signal.getsignal(signal.SIGALRM) is not self._alarm_handler:
            signal.signal(signal.SIGALRM, self._alarm_handler)
        if signal.getsignal(signal.SIGCHLD) is not signal.SIG_DFL:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # SIG_IGN would hide exit codes from later jobs
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _OURS)
        if self.jobs_run % _REAP_EVERY == 0:
            proctree.reap_adopted()  # zombies of orphans our jobs left (we adopt them: subreaper)
        try:
            intact = os.fstat(self.channel.sock.fileno()).st_ino == self._channel_inode
        except OSError:
            intact = False
        if not intact:
            log.error("worker %s[%d]: a job closed the worker's channel to the master; settling "
                      "its job and exiting", self.spec.queue.name, self.spec.index,
                      extra=fields(queue=self.spec.queue.name, worker_pid=os.getpid(),
                                   reason="channel_lost"))
            self.channel.lost = True
            # the job may have closed the Redis socket too: start from a fresh connection
            self.redis = _connect(self.spec)
            return False
        if self.channel.drain_requested():
            self.draining = True
        return True

    def _on_redis(self, fn: Callable[[Any], Any]) -> Any:
        """``fn(client)``, riding out Redis outages (for the partition turns)."""
        return self._redis_retry(lambda: fn(self.redis))

    # -- recycling ------------------------------------------------------------

    def _recycle_due(self) -> str | None:
        if self.spec.max_jobs and self.jobs_run >= self.spec.max_jobs:
            reason = "max_jobs"
        elif self.spec.max_age and time.monotonic() - self.started >= self.spec.max_age:
            reason = "max_age"
        else:
            return None
        # asked and told to wait: ask again after a job or a second, not in a tight loop
        if self._last_recycle_ask >= 0 and time.monotonic() - self._last_recycle_ask < 1.0 \
                and self.jobs_run == self._asked_at_jobs:
            return None
        return reason

    def _may_recycle(self, reason: str) -> bool:
        """Asks the master: it grants at most recycle.max_concurrent recycles per pool at once."""
        self._last_recycle_ask = time.monotonic()
        self._asked_at_jobs = self.jobs_run
        answer = self.channel.ask("recycle", reason)
        return answer == "go"  # no answer: keep working, ask again later

    def _next_token(self) -> str:
        self._tokens += 1
        return f"{self._token_prefix}{self._tokens:x}"

    def _settle_and_reserve(self, pending: Call | None, reserve: bool = True,
                            lane: QueueKeys | None = None) -> list[Any]:
        """Settles the last job and reserves the next in one script call (one round trip; two
        calls in one pipeline when they are in different slots: another partition); rides out
        Redis outages. Re-sent after a lost reply, it settles and reserves nothing twice."""
        if pending is not None and reserve and pending.script == "ack" and pending.args[ACK_WAKE]:
            # our own reserve takes the slot this ack frees: waking a waiter for it would only
            # cost it a wasted reserve
            args = list(pending.args)
            args[ACK_WAKE] = ""
            pending = pending._replace(args=tuple(args))
        calls = [c for c in (pending,) if c is not None]
        token = self._next_token()
        lane = lane or self.keys
        if reserve:
            calls.append(lane.reserve(self.id, token, self.lease_ms, self.spec.rules,
                                      partitions=self.partitions or 0, cluster=is_cluster(self.redis)))
        # Before the first attempt: a reserve re-sent after a lost reply returns the job the first
        # one leased, whose lease in Redis runs from then, so the lease is counted from here.
        sent = time.monotonic()
        if len(calls) == 2 and hash_tag(calls[0].keys[0]) == hash_tag(calls[1].keys[0]):
            combined = settle_and_reserve(calls[0], calls[1])
            results = self._redis_retry(lambda: run(self.redis, combined)[0])
        else:
            results = self._redis_retry(lambda: run(self.redis, *calls))
        if pending is not None:
            _log_settle(self.spec, pending, results[0])
            if self.spec.wait[0]:
                self._wait_replicas(pending)
        if not reserve:
            return [ReserveReply.EMPTY, -1]
        reply = results[-1]
        if reply[0] == _JOB:
            reply = list(reply)
            reply.append(token)
            if self.turns is not None:
                self.turns.in_a_row += 1
            if self.spec.board is not None:
                # the sentry freezes this job's tree if no renewal is confirmed by then
                self.spec.board.begin(self.spec.slot, self.jobs_run + 1, sent + self.lease_ms / 1000.0
                                      - margin(self.spec.lease),
                                      -1 if lane.partition is None else lane.partition)
        return reply

    def _wait_replicas(self, settle: Call) -> None:
        """redis.wait: the settle is on the primary; says so when too few replicas confirmed it
        (a failover then could bring the job back and run it again)."""
        replicas, timeout = self.spec.wait
        timeout_ms = max(1, int(timeout * 1000))
        acked = self._redis_retry(lambda: wait_replicas(self.redis, [settle.keys[0]], replicas, timeout_ms))
        if acked < replicas:
            log.warning("job %s: %s", settle.args[0],
                        NotReplicated("settled on the primary", acked, replicas, timeout_ms),
                        extra=fields(queue=self.spec.queue.name, job=settle.args[0], reason="not_replicated"))

    def _redis_retry(self, fn: Any) -> Any:
        delay, warned = 0.1, False
        while True:
            try:
                result = fn()
                if warned:
                    log.warning("worker %s[%d]: Redis is back", self.spec.queue.name, self.spec.index)
                return result
            except redis.RedisError as exc:
                if not is_transient(exc):
                    raise
                if not warned:
                    log.warning("worker %s[%d]: Redis unavailable (%s); retrying",
                                self.spec.queue.name, self.spec.index, exc)
                    warned = True
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    # -- waits ----------------------------------------------------------------

    def _age_left(self, seconds: float) -> float:
        """``seconds``, or less when max_age falls due sooner."""
        if self.spec.max_age:
            return min(seconds, self.spec.max_age - (time.monotonic() - self.started))
        return seconds

    def _wait(self, why: str, block: Callable[[], Any], reap: bool = True) -> Any:
        """``block()`` as an idle worker: SIGTERM interrupts it, and a drain already asked for
        skips it (None)."""
        self.rang = False
        self.title(why)
        if reap:
            proctree.reap_adopted()
        self._idle = True
        try:
            if self.draining:
                return None
            return block()
        finally:
            self._idle = False

    def _wait_for_ticket(self, ms: int) -> None:
        """Sleeps until the start the reserve set aside for us, on our own clock: Redis resolves
        blocking timeouts on its 10 Hz timer, up to 100 ms late, and a late start under a token
        bucket is throughput lost for good. Not a poll: the start is ours when we wake."""
        # aim a little early: the start is good from grace before its time, and the round trip
        # to claim it takes a while
        seconds = max(self._age_left(min(max(ms - self.spec.rules.grace_ms / 2, 0) / 1000.0, _IDLE_WAIT_MAX)), 0.0)
        self._wait("throttled", lambda: time.sleep(seconds), reap=False)

    def _wait_for_work(self, next_due_ms: int, why: str = "idle") -> None:
        """Blocks in Redis until a job is enqueued (or a delayed one falls due, or it is time
        to recycle); no polling."""
        timeout = min(_IDLE_WAIT_MAX, max(self._age_left(_IDLE_WAIT_MAX if next_due_ms < 0 else next_due_ms / 1000.0),
                                          0.01))
        self._wait(why, lambda: self._redis_retry(lambda: self.redis.blpop([self.keys.wake], timeout=timeout)))

    def _wait_for_hint(self) -> None:
        """Blocks on our master's hint list until a producer (or the master) names a partition
        with jobs ready; hints for partitions our master no longer holds are passed over."""
        assert self.turns is not None
        timeout = min(_IDLE_WAIT_MAX, max(self._age_left(_IDLE_WAIT_MAX), 0.01))
        hint_key = self.spec.hint_key
        self.turns.hinted(self._wait("idle", lambda: self._redis_retry(
            lambda: self.redis.blpop([hint_key], timeout=timeout))))

    def title(self, what: str) -> None:
        """The process title: which worker, and what it does now."""
        setproctitle(f"governor: worker {self.spec.queue.name}[{self.spec.index}] {what}")


def _connect(spec: WorkerSpec) -> redis.Redis:
    """The worker's own connection. No command of ours takes longer than the longest idle
    wait: a Redis (or a Cluster primary) that hangs without closing the socket is given up on,
    not waited for forever."""
    return connect(spec.redis_url, socket_timeout=_IDLE_WAIT_MAX + 5.0, tls=spec.tls,
                   name=f"governor-worker-{spec.queue.name}-{spec.index}")


def _log_settle(spec: WorkerSpec, call: Call, result: Any) -> None:
    """Says so when a settle found its lease lost, or dead-lettered the job."""
    job_id = call.args[0]
    lost = call.script == "ack" and result == 0 or call.script == "fail" and result == _LOST
    dead = call.script == "fail" and result == _DEAD
    if not (lost or dead):
        return  # the common case: nothing to say, nothing to build
    extra = fields(worker=f"{spec.queue.name}[{spec.index}]", worker_pid=os.getpid(),
                   queue=spec.queue.name, job=job_id)
    if lost:
        log.warning("job %s: lease lost before settling (another worker owns it now); result dropped",
                    job_id, extra=extra)
    else:
        error = json.loads(call.args[3]).get("error", "") if call.args[3] else ""
        last = error.splitlines()[-1] if error else ""
        log.warning("job %s dead-lettered (%s): %s", job_id, call.args[6], last,
                    extra={**extra, "reason": call.args[6]})
