"""The worker child: reserve a job, run it, settle it, tell the master; until told to stop.

The worker owns nothing the master relies on for safety: the master knows
which job it runs (from ``start`` messages and the lease in Redis) and kills
it from outside when a limit is crossed. The worker's own duties are to run
only allowed handlers, to settle every job it takes exactly once, and to stop
taking jobs when it receives SIGTERM (drain).
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import random
import secrets
import signal
import socket
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import redis
from setproctitle import setproctitle

from governor import context
from governor.config import AppConfig, QueueConfig, TlsConfig
from governor.context import JobContext
from governor.errors import SoftTimeLimitExceeded
from governor.identity import worker_id
from governor.log import fields
from governor.protocol import limits
from governor.protocol.connection import connect, disconnect, is_cluster, is_transient
from governor.protocol.limits import RateLimited, Rules
from governor.protocol.queue import (
    ACK_WAKE,
    DEFAULT_MAX_PAYLOAD,
    JOB_ID,
    MAX_TIMEOUT,
    NO_RULES,
    Call,
    FailOutcome,
    NotReplicated,
    QueueKeys,
    Reserved,
    hash_tag,
    run,
    settle_and_reserve,
    wait_replicas,
)
from governor.supervise import proctree
from governor.supervise.channel import WorkerEnd
from governor.supervise.environ import forget_environment
from governor.supervise.handlers import HandlerError, HandlerRegistry, Payload
from governor.supervise.handlerstats import ADAPTIVE_REFRESH, runtimes_kept
from governor.supervise.scoreboard import Scoreboard, margin
from governor.untrusted import bounded

log = logging.getLogger("governor.worker")

FORWARDED_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP}
_IDLE_WAIT_MAX = 30.0  # seconds a blocked idle worker waits before re-checking (not a poll: ~0.03 cmd/s)
_MAX_TRACEBACK = 16 * 1024
_OURS = FORWARDED_SIGNALS | {signal.SIGALRM, signal.SIGCHLD}  # unblocked again after every job
_REAP_EVERY = 64  # jobs between two looks for adopted zombies (and before every idle wait)
_TURN = 16  # jobs in a row a worker takes from one partition before it lets others have a turn


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, handed over by fork (never serialised)."""

    queue: QueueConfig
    app: AppConfig
    redis_url: str = field(repr=False)  # may hold a password
    prefix: str
    lease: float
    index: int
    master_pid: int
    max_jobs: int | None = None  # this worker's own, jittered, recycle limits
    max_age: float | None = None
    tls: TlsConfig | None = None
    user: str | None = None  # drop to this user/group after fork, before anything else runs
    group: str | None = None
    max_payload: int = DEFAULT_MAX_PAYLOAD  # a larger payload found in Redis is dead-lettered
    max_result: int = 64 * 1024  # a larger result is not kept (the record says so)
    sentry: bool = False  # the master has a sentry to kill our tree if it dies (proctree.Sentry)
    board: Scoreboard | None = None  # shared lease state, read by the sentry (scoreboard.py)
    rules: Rules = NO_RULES  # the queue's fleet-wide concurrency and rate limits
    limiters: Mapping[str, Any] = field(default_factory=dict)  # named limiters, for governor.limit()
    slot: int = -1  # ours in it
    held: Any = None  # partitioned queues: the partitions our master holds (partitions.HeldTable)
    hint_key: str = ""  # ... and the list our master's hints for them arrive on
    wait: tuple[int, float] = (0, 0.0)  # redis.wait: replicas each settle waits for, and how long
    nice: int | None = None  # the scheduling priority governor was started with (the master's is raised)
    shutdown_timeout: float = 30.0  # a command pool's program gets this long after stop_signal
    secret_env: tuple[str, ...] = ()  # variables the config read secrets from: not for job code


MAX_EPOCH_MS = 2 ** 53  # a time in a job's record beyond this is no time Redis wrote


class _Interrupted(BaseException):
    """SIGTERM while blocked waiting for work: leave the wait at once.

    A BaseException so that redis-py, which wraps Exceptions raised while
    reading a socket into ConnectionError, lets it through unchanged.
    """


def main(spec: WorkerSpec, sock: socket.socket, inherited_fds: Iterable[int],
         runner: Callable[[WorkerSpec, WorkerEnd], Any] | None = None) -> NoReturn:
    """Entry point in the forked child; never returns. ``runner``: the worker class (a command
    pool's, command.CommandWorker; by default this module's Worker)."""
    code = 0
    channel = WorkerEnd(sock)
    try:
        _detach_from_master(spec, inherited_fds)
        code = (runner or Worker)(spec, channel).run()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:
        log.exception("worker %s[%d] crashed", spec.queue.name, spec.index)
        # the master shows this in `governor status` while the pool backs off
        channel.send("fatal", "".join(traceback.format_exception_only(type(exc), exc)).strip()[:2000])
        code = 1
    finally:
        logging.shutdown()
        os._exit(code)


def _detach_from_master(spec: WorkerSpec, inherited_fds: Iterable[int]) -> None:
    """Undo what fork copied from the master that the child must not keep."""
    if spec.board is not None:
        spec.board.narrow(spec.slot)  # (before its descriptor is closed below)
    signal.set_wakeup_fd(-1)  # else our signals would wake the master's loop
    if spec.nice is not None:
        proctree.restore_priority(spec.nice)  # jobs run at the operator's priority, not the master's
    try:
        os.setpgid(0, 0)  # own process group: the master can kill us with our grandchildren
    except OSError:
        pass
    for fd in inherited_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    for sig in (signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)  # the master decides what those mean
    for sig in (signal.SIGQUIT, signal.SIGCHLD, signal.SIGALRM, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)
    import resource  # before the switch: the new user may not be able to read the standard library

    forget_environment(spec.secret_env)
    _drop_privileges(spec.user, spec.group)  # first: a credential change clears PDEATHSIG
    # Die with the master: stopped, for its sentry to kill with our whole tree; or, with no
    # sentry, killed outright (then our job's children may outlive us).
    proctree.set_death_signal(signal.SIGSTOP if spec.sentry else signal.SIGKILL)
    if os.getppid() != spec.master_pid:  # the master died before prctl took effect
        os._exit(1)
    proctree.become_subreaper()  # adopt (and reap) the orphans of our jobs
    hard = spec.queue.settings.memory.hard
    if spec.queue.settings.memory.rlimit and hard:
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard))


def _drop_privileges(user: str | None, group: str | None) -> None:
    """Become ``user``/``group`` for good (setgroups, setgid, then setuid), before any job code."""
    if not user and not group:
        return
    import grp
    import pwd

    pw = pwd.getpwnam(user) if user else None
    gid = grp.getgrnam(group).gr_gid if group else (pw.pw_gid if pw else os.getgid())
    if os.geteuid() != 0:
        if (pw is None or pw.pw_uid == os.geteuid()) and gid == os.getegid():
            return  # already who we should be
        raise PermissionError(f"cannot switch to user {user!r} group {group!r}: the master is not root")
    os.setgroups([gid])
    os.setgid(gid)
    if pw:
        os.setuid(pw.pw_uid)
        os.environ.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name)


class Worker:
    """One worker's loop. State lives here and nowhere else in the child."""

    def __init__(self, spec: WorkerSpec, channel: WorkerEnd) -> None:
        self.spec = spec
        self.channel = channel
        self.id = worker_id(os.getpid())
        self.keys = QueueKeys(spec.prefix, spec.queue.name)
        self.partitions = spec.queue.partitions if spec.held is not None else None
        self.current: int | None = None  # the partition we reserve from (partitioned queues)
        self._in_a_row = 0  # jobs taken from it since we came to it
        self.job_keys = self.keys  # where the job we run lives: its settle goes there
        self._adaptive: dict[str, tuple[float, dict[str, float]]] = {}  # lane -> (read at, learnt limits)
        self.registry = HandlerRegistry(spec.app.handlers)
        self.settings = spec.queue.settings
        self.lease_ms = int(spec.lease * 1000)
        self.done_ttl_ms = int(self.settings.done_ttl * 1000)
        self._token_prefix = secrets.token_hex(6)
        self._tokens = 0
        self.draining = False
        self.exit_reason: str | None = None  # why we stop taking work, when not drained (a subclass's)
        self._idle = False
        self._rang = False  # told the master we are busy since we last waited for work
        self._in_job = False
        self.jobs_run = 0
        self.started = time.monotonic()
        self._last_recycle_ask = -1.0
        self._asked_at_jobs = 0
        self.redis: redis.Redis | None = None
        # Bound once, so "is the handler still ours?" is an identity check after each job.
        self._term_handler = self._on_term
        self._alarm_handler = self._on_alarm
        self._channel_inode = os.fstat(channel.sock.fileno()).st_ino

    # -- signals --------------------------------------------------------------

    def _on_term(self, signum: int, frame: Any) -> None:
        self.draining = True
        if self._idle:
            raise _Interrupted()

    def _on_alarm(self, signum: int, frame: Any) -> None:
        if self._in_job:
            raise SoftTimeLimitExceeded()

    # -- main loop ------------------------------------------------------------

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._term_handler)
        signal.signal(signal.SIGALRM, self._alarm_handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED_SIGNALS)  # blocked by the master at fork
        self._title("starting")
        for module in self.spec.app.imports:
            # a failure here kills the worker before its first job: the master backs off
            importlib.import_module(module)
        self.redis = self._connect()
        limits.bind(self.redis, self.spec.prefix, self.spec.limiters)
        self.channel.send("ready")
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
                lane = self._lane()
                if lane is None:  # partitioned, and no partition to look at: wait for a hint
                    if pending is not None:
                        self._settle_and_reserve(pending, reserve=False)
                        pending = None
                    self._wait_for_hint()
                    continue
                reply = self._settle_and_reserve(pending, lane=lane)
                pending = None
                if reply[0] != 1 and self.partitions:
                    self._leave_partition()
                    continue
                if reply[0] == 0:
                    self._wait_for_work(reply[1])
                    continue
                if reply[0] == 2:  # throttled: a start is ours in reply[1] ms
                    self._wait_for_ticket(reply[1])
                    continue
                if reply[0] in (3, 4):  # at global_concurrency, or paused: a settle or resume wakes us
                    self._wait_for_work(-1, "waiting for a slot" if reply[0] == 3 else "paused")
                    continue
                pending = self._run(reply)
                if not self._after_job():
                    reason = "channel_lost"
                    break
        except _Interrupted:
            disconnect(self.redis)  # a BLPOP reply may be half read
        if pending is not None:
            self._settle_and_reserve(pending, reserve=False)
        self.channel.send("exit", self.exit_reason or reason)
        return 0

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
            self.redis = self._connect()
            return False
        if self.channel.drain_requested():
            self.draining = True
        return True

    def _lane(self) -> QueueKeys | None:
        """Where the next reserve looks: the queue, or (partitioned) the partition we are on
        while our master still holds it."""
        if not self.partitions:
            return self.keys
        if self.current is not None and self._in_a_row >= _TURN:
            self._take_turns()
        if self.current is not None and self.spec.held.held(self.current):
            return self.keys.part(self.current)
        self.current = None
        return None

    def _take_turns(self) -> None:
        """A busy partition must not starve the others this worker could serve: after a run
        of jobs from it, it goes to the back of the hint list and the oldest hint is next (our
        own partition again when nobody else waits)."""
        part = str(self.current)

        def rotate() -> Any:
            pipe = self.redis.pipeline(transaction=False)
            pipe.lrem(self.spec.hint_key, 0, part)  # (hints for it ahead of the others: ours now)
            pipe.rpush(self.spec.hint_key, part)
            pipe.lpop(self.spec.hint_key)
            return pipe.execute()[2]

        self._in_a_row = 0
        nxt = self._redis_retry(rotate)
        try:
            self.current = int(nxt) if nxt is not None else None
        except ValueError:
            self.current = None

    def _leave_partition(self) -> None:
        """Our partition has nothing for us now. The hints for it still queued are stale (we
        took those jobs ourselves, or they are behind their key's head): dropped, or each
        would cost an idle worker a wake-up and an empty reserve. A job enqueued in between
        loses its hint, not its place: its partition is marked touched, and the master sends
        an idle worker at its next lease pass."""
        part, self.current = self.current, None
        if part is not None:
            self._redis_retry(lambda: self.redis.lrem(self.spec.hint_key, 0, str(part)))

    def _wait_for_hint(self) -> None:
        """Blocks on our master's hint list until a producer (or the master) names a partition
        with jobs ready; hints for partitions our master no longer holds are passed over."""
        self._rang = False
        timeout = _IDLE_WAIT_MAX
        if self.spec.max_age:
            timeout = min(timeout, self.spec.max_age - (time.monotonic() - self.started))
        timeout = min(_IDLE_WAIT_MAX, max(timeout, 0.01))
        self._title("idle")
        proctree.reap_adopted()
        self._idle = True
        try:
            if self.draining:
                return
            got = self._redis_retry(lambda: self.redis.blpop([self.spec.hint_key], timeout=timeout))
        finally:
            self._idle = False
        if got:
            try:
                part = int(got[1])
            except ValueError:
                return
            if 0 <= part < self.partitions and self.spec.held.held(part):
                self.current, self._in_a_row = part, 0

    def _connect(self) -> redis.Redis:
        # No command of ours takes longer than the longest idle wait: a Redis (or a Cluster
        # primary) that hangs without closing the socket is given up on, not waited for forever.
        return connect(self.spec.redis_url, socket_timeout=_IDLE_WAIT_MAX + 5.0, tls=self.spec.tls,
                       name=f"governor-worker-{self.spec.queue.name}-{self.spec.index}")

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
            self._log_settle(pending, results[0])
            if self.spec.wait[0]:
                self._wait_replicas(pending)
        if not reserve:
            return [0, -1]
        reply = results[-1]
        if reply[0] == 1:
            reply = list(reply)
            reply.append(token)
            self.job_keys = lane
            self._in_a_row += 1
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

    def _log_settle(self, call: Call, result: Any) -> None:
        job_id = call.args[0]
        lost = call.script == "ack" and result == 0 or call.script == "fail" and result == FailOutcome.LOST
        dead = call.script == "fail" and result == FailOutcome.DEAD
        if not (lost or dead):
            return  # the common case: nothing to say, nothing to build
        extra = fields(worker=f"{self.spec.queue.name}[{self.spec.index}]", worker_pid=os.getpid(),
                       queue=self.spec.queue.name, job=job_id)
        if lost:
            log.warning("job %s: lease lost before settling (another worker owns it now); result dropped",
                        job_id, extra=extra)
        else:
            error = json.loads(call.args[3]).get("error", "") if call.args[3] else ""
            last = error.splitlines()[-1] if error else ""
            log.warning("job %s dead-lettered (%s): %s", job_id, call.args[6], last,
                        extra={**extra, "reason": call.args[6]})

    def _wait_for_ticket(self, ms: int) -> None:
        """Sleeps until the start the reserve set aside for us, on our own clock: Redis resolves
        blocking timeouts on its 10 Hz timer, up to 100 ms late, and a late start under a token
        bucket is throughput lost for good. Not a poll: the start is ours when we wake."""
        self._rang = False
        # aim a little early: the start is good from grace before its time, and the round trip
        # to claim it takes a while
        seconds = min(max(ms - self.spec.rules.grace_ms / 2, 0) / 1000.0, _IDLE_WAIT_MAX)
        if self.spec.max_age:
            seconds = min(seconds, max(self.spec.max_age - (time.monotonic() - self.started), 0.0))
        self._title("throttled")
        self._idle = True
        try:
            if not self.draining:
                time.sleep(seconds)
        finally:
            self._idle = False

    def _wait_for_work(self, next_due_ms: int, why: str = "idle") -> None:
        """Blocks in Redis until a job is enqueued (or a delayed one falls due, or it is time
        to recycle); no polling."""
        self._rang = False
        timeout = _IDLE_WAIT_MAX if next_due_ms < 0 else next_due_ms / 1000.0
        if self.spec.max_age:
            timeout = min(timeout, self.spec.max_age - (time.monotonic() - self.started))
        timeout = min(_IDLE_WAIT_MAX, max(timeout, 0.01))
        self._title(why)
        proctree.reap_adopted()
        self._idle = True
        try:
            if self.draining:
                return
            self._redis_retry(lambda: self.redis.blpop([self.keys.wake], timeout=timeout))
        finally:
            self._idle = False

    # -- running one job ------------------------------------------------------

    def _run(self, reply: list[Any]) -> Call:
        """Runs the job and returns the script call that settles it."""
        token = reply[-1]
        job = Reserved.from_reply(reply[:4], token)
        handler_name = job.meta.get("handler") if isinstance(job.meta.get("handler"), str) else "?"
        soft, hard, adaptive = self._limits(job, handler_name)
        ready = bounded(job.meta.get("ready_at") or job.meta.get("enqueued_at"), 0, MAX_EPOCH_MS)
        started_at = bounded(job.meta.get("started_at"), 0, MAX_EPOCH_MS)
        wait = max(0.0, (started_at - ready) / 1000.0) if ready is not None and started_at is not None else None
        self._report_start(job, token, handler_name, soft, hard, wait, adaptive)
        self._title(f"job {job.id if JOB_ID.fullmatch(job.id) else _printable(job.id)} {handler_name}")
        self.jobs_run += 1
        started = time.monotonic()
        try:
            payload = Payload.parse(job.payload, self.spec.max_payload)
            if job.meta.get("malformed"):
                raise HandlerError("malformed", f"malformed job: its record in Redis is unusable "
                                                f"({job.meta['malformed']}), so its settings are unknown")
            func = self.registry.resolve(payload.handler)
        except HandlerError as exc:
            self._job_over()
            self._report_end(exc.reason, time.monotonic() - started)
            return self.job_keys.fail(job.id, token, self.id, self._error(job, exc.reason, str(exc)),
                                  "dead", 0, exc.reason, self.settings.retry.max)
        context._enter(JobContext(id=job.id, queue=self.spec.queue.name, handler=payload.handler,
                                  attempt=job.attempts, fencing_token=job.fencing_token,
                                  deadline=time.time() + hard if hard else None))
        try:
            self._in_job = True
            if soft:
                signal.setitimer(signal.ITIMER_REAL, soft)
            result = func(*payload.args, **payload.kwargs)
            self._in_job = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            self._job_over()
        except RateLimited as exc:
            # not the job's failure: it goes back, due when the limiter will have a start
            self._in_job = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            self._job_over()
            self._report_end("throttled", time.monotonic() - started)
            return self.job_keys.fail(job.id, token, self.id, None, "throttle",
                                  max(1, int(exc.retry_after * 1000)), "throttled", self.settings.retry.max)
        except (Exception, SystemExit, SoftTimeLimitExceeded) as exc:
            self._in_job = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            self._job_over()
            seconds = time.monotonic() - started
            reason = "timeout_soft" if isinstance(exc, SoftTimeLimitExceeded) else "exception"
            self._report_end(reason, seconds)
            tb = traceback.format_exc()[-_MAX_TRACEBACK:]
            error = self._error(job, reason, "".join(traceback.format_exception_only(type(exc), exc)).strip(),
                                traceback=tb, seconds=round(seconds, 3))
            log.debug("job %s failed: %s", job.id, error["error"])
            return self.job_keys.fail(job.id, token, self.id, error, "retry", self._backoff_ms(job.attempts),
                                  reason, self.settings.retry.max)
        seconds = time.monotonic() - started
        self._report_end("ok", seconds)
        log.debug("job %s done in %.3fs", job.id, seconds)
        text, note = _result_json(result, self.spec.max_result)
        if note:
            log.warning("job %s: result not kept: %s", job.id, note,
                        extra=fields(queue=self.spec.queue.name, job=job.id, reason="result_dropped"))
        learning = self.settings.timeout.adaptive
        return self.job_keys.ack(job.id, token, self.id, self.done_ttl_ms, text, int(seconds * 1000), note,
                                 wake=self.spec.rules.global_concurrency > 0,
                                 runtimes=(payload.handler, runtimes_kept(learning)))

    def _report_start(self, job: Reserved, token: str, handler: str, soft: float | None,
                      hard: float | None, wait: float | None, adaptive: bool = False) -> None:
        """What the master must know of the run (to enforce its hard limit, requeue it if we
        die, show it): written to our scoreboard slot, which the master reads on its own clock.
        No message, so no wake-up of the master per job; only a worker that was idle rings
        (the master then looks every 50 ms while any worker is busy)."""
        if self.spec.board is None:
            return
        self.spec.board.start_run(self.spec.slot, self.jobs_run + 1, job.id, token, handler, job.attempts,
                                  soft, hard, self.job_keys.partition, wait, adaptive)
        if not self._rang:
            self._rang = True
            self.channel.send("busy")

    def _report_end(self, outcome: str, seconds: float) -> None:
        if self.spec.board is not None:
            self.spec.board.finish_run(self.spec.slot, outcome, seconds)

    def _job_over(self) -> None:
        """Nothing of the job runs any more: its lease no longer needs guarding (the settle that
        follows is fenced by the token)."""
        context._enter(None)
        if self.spec.board is not None:
            self.spec.board.end(self.spec.slot)

    def _limits(self, job: Reserved, handler: str) -> tuple[float | None, float | None, bool]:
        """(soft, hard seconds, whether hard was learnt). A per-job timeout replaces the hard
        limit and scales the soft one; else a limit learnt from the handler's runs
        (timeout.adaptive) does the same; else the configured ones apply."""
        soft, hard = self.settings.timeout.soft, self.settings.timeout.hard
        override = bounded(job.meta.get("timeout"), 0.001, MAX_TIMEOUT)  # (as enqueue allows)
        learnt = False
        if not (isinstance(override, (int, float)) and override > 0) and self.settings.timeout.adaptive:
            override = self._learnt(handler)
            learnt = override is not None
        if isinstance(override, (int, float)) and override > 0:
            soft = override * (soft / hard) if soft and hard else None
            hard = float(override)
            return soft, hard, learnt
        return soft, hard, False

    def _learnt(self, handler: str) -> float | None:
        """The handler's learnt hard limit in this lane, in seconds, as the masters last wrote
        it (handlers.lua); read again at most every ADAPTIVE_REFRESH, and only while jobs
        run. None: not learnt yet (too few samples), fallen back, or Redis did not answer."""
        lane = self.job_keys.adaptive
        at, limits = self._adaptive.get(lane, (-math.inf, {}))
        if time.monotonic() - at >= ADAPTIVE_REFRESH:
            try:
                raw = self.redis.hgetall(lane)
                # each value as the masters write it (milliseconds), else ignored: the hash is
                # anyone's to write, and a 400-digit value overflowed the division below
                adaptive = self.settings.timeout.adaptive
                low, high = (adaptive.min, adaptive.max) if adaptive else (0.001, MAX_TIMEOUT)
                limits = {}
                for k, v in raw.items():
                    seconds = int(v) / 1000.0 if v.isdigit() and len(v) <= 15 else 0.0
                    if seconds > 0:  # (0: fallen back to the configured limits)
                        limits[k.decode(errors="replace")] = min(max(seconds, low), high)
            except (redis.RedisError, ValueError):
                pass  # the limits known before (or the configured ones) until the next look
            self._adaptive[lane] = (time.monotonic(), limits)
        return limits.get(handler) or None

    def _backoff_ms(self, attempts: int) -> int:
        """Capped exponential backoff with equal jitter, so retries of a burst spread out."""
        policy = self.settings.retry
        delay = min(policy.max_backoff, policy.backoff * (2 ** min(max(attempts - 1, 0), 64)))
        return int((delay / 2 + random.uniform(0, delay / 2)) * 1000)

    def _error(self, job: Reserved, reason: str, message: str, **extra: Any) -> dict[str, Any]:
        entry = {"attempt": job.attempts, "reason": reason, "error": message, "worker": self.id, **extra}
        return {k: _clean(v) if isinstance(v, str) else v for k, v in entry.items()}

    def _title(self, what: str) -> None:
        setproctitle(f"governor: worker {self.spec.queue.name}[{self.spec.index}] {what}")


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
