"""Runs in the worker child: the loop of a worker that runs several jobs at once
(``jobs_per_worker`` > 1).

The control thread (the process's main thread) owns the Redis connection, the scoreboard and
every job's lease; jobs run on the pool of threads or as tasks on the event loop
(flightrun.py) and hand back only what their handler returned or raised. Each turn of the
loop settles every job that finished since the last and reserves for every free slot, in one
script call (flight.lua: one round trip, however many jobs), then waits for the next job to
finish, a limit to fall due, or (with a slot free and the queue empty) a wake token. Each job
keeps its own lease (held by its slot, ``<worker id>~<n>``), fencing token, limits and
record; a job the master must kill with its worker costs its neighbours nothing (they are
requeued, not charged). A job requeued as a *suspect* (it was among several in a worker killed
for memory or a crash) runs alone: the worker takes no job while it waits or runs.
"""

from __future__ import annotations

import logging
import math
import queue
import signal
import threading
import time
from typing import Any

import redis
from setproctitle import setproctitle

from governor.errors import HardTimeLimitExceeded, SoftTimeLimitExceeded
from governor.protocol.connection import connect, is_cluster
from governor.protocol.keys import QueueKeys
from governor.protocol.records import ReserveReply
from governor.protocol.scripts import Call, flight, hash_tag, run
from governor.supervise import proctree
from governor.supervise.channel import WorkerEnd
from governor.supervise.child import WorkerSpec
from governor.supervise.flightrun import EventLoop, FlightRun, Threads, is_async
from governor.supervise.runtable import RunTable, slot_id
from governor.supervise.scoreboard import Tally, margin
from governor.supervise.worker import (
    _IDLE_WAIT_MAX,
    _REAP_EVERY,
    Worker,
    _log_settle,
)

log = logging.getLogger("governor.worker")

BLOCKED_AFTER = 1.0  # seconds the event loop may not turn before it is shown blocked
_WAKE, _TERM = "wake", "term"  # besides finished runs, what the control thread is woken by


class Waker:
    """While jobs run and a slot is free with nothing to take, blocks in Redis (on its own
    connection) for a wake token or a partition hint, and wakes the control thread with it:
    a job enqueued meanwhile is picked up at once, not when a running job ends."""

    def __init__(self, spec: WorkerSpec, wake: queue.SimpleQueue) -> None:
        self.spec, self.wake = spec, wake
        self.key = ""
        self.armed = threading.Event()
        self.thread: threading.Thread | None = None

    def arm(self, key: str) -> None:
        self.key = key
        self.armed.set()
        if self.thread is None:
            self.thread = threading.Thread(target=self._serve, name="governor-waker", daemon=True)
            self.thread.start()

    def _serve(self) -> None:
        client = connect(self.spec.redis_url, socket_timeout=_IDLE_WAIT_MAX + 5.0, tls=self.spec.tls,
                         name=f"governor-waker-{self.spec.queue.name}-{self.spec.index}")
        while True:
            self.armed.wait()
            self.armed.clear()
            try:
                got = client.blpop([self.key], timeout=_IDLE_WAIT_MAX)
            except redis.RedisError:
                time.sleep(0.5)
                got = None
            self.wake.put((_WAKE, got))


class FlightWorker(Worker):
    """A worker with ``jobs_per_worker`` slots; the loop, its slots and its timers."""

    def __init__(self, spec: WorkerSpec, channel: WorkerEnd) -> None:
        super().__init__(spec, channel)
        self.size = spec.queue.settings.jobs_per_worker
        self.table = RunTable(spec.board, spec.slot, self.size) if spec.board is not None else None
        self.free = list(range(self.size - 1, -1, -1))  # slots holding nothing (a stack: 0 first)
        self.flying: dict[int, FlightRun] = {}  # slot -> its run (running, or a suspect waiting)
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.threads = Threads(self.size, self.inbox.put)
        self.loop = EventLoop(self.inbox.put)
        self.waker = Waker(spec, self.inbox)
        self.tally = Tally(spec.board.buckets if spec.board is not None else ())
        self.next_limit = math.inf
        self.kill_at = 0.0  # the earliest hard limit and grace of a job in flight (0: none), as shown
        self.grace = spec.queue.settings.timeout.grace
        self._blocked_shown: tuple[float, int] | None = None  # the earliest soft or hard limit of a job in flight (or before)
        self.suspect: FlightRun | None = None  # runs (or waits to run) alone
        self.settles: list[Call] = []
        self.empty = False  # the last reserve found nothing to take: wait for a wake first
        self.status = ReserveReply.EMPTY, -1  # the last reserve reply that was not a job
        self.retry_at = 0.0  # throttled: a start is ours then
        self.holds = 0  # runs held so far (each entry's run number)
        self.reaped_at = 0  # jobs run when zombies our jobs' orphans left were last reaped
        self.epoch = 0  # the board's job number: one per stretch of holding any job
        self._titled = -1

    def _on_term(self, signum: int, frame: Any) -> None:
        self.draining = True
        self.inbox.put(_TERM)  # wakes every wait of ours (SimpleQueue.put is safe in a signal handler)

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> int:
        self.start_up(signal.SIG_IGN)  # (limits are timers of the loop, not alarms)
        reason = "drain"
        while True:
            take = self._wanted()
            if self.settles or take:
                self._round_trip(take)
            if not self.flying and not self.settles:
                self._write_tally()
                due = self._recycle_due()
                if due and self._may_recycle(due):
                    reason = due
                    break
                if self.draining or self.channel.lost:
                    break
                if not self._wanted():
                    self._idle_wait()
                continue
            self._title()
            self._await(take)
        if self.settles:
            self._round_trip(0)
        self._write_tally()
        self.threads.stop()
        self.loop.stop()
        if self.channel.lost:
            reason = "channel_lost"
        self.channel.send("exit", self.exit_reason or reason)
        return 0

    def _wanted(self) -> int:
        """How many jobs to reserve now."""
        if self.draining or self.channel.lost or self.suspect is not None or self._recycle_due():
            return 0
        if self.empty and not self.settles:
            return 0
        if self.retry_at and time.monotonic() < self.retry_at:
            return 0
        if self.turns is not None and not (self.turns.current is not None and self.spec.held.held(self.turns.current)):
            return 0  # partitioned, and no partition to reserve from: wait for a hint
        return len(self.free)

    def _await(self, took: int) -> None:
        """Waits for a job to end, a limit to fall due or a wake token; then takes what
        came: finished runs become settles, due limits are thrown into their jobs."""
        if self.free and self.empty and not self.draining and self.suspect is None:
            self.waker.arm(self.spec.hint_key if self.turns is not None else self.keys.wake)
        timeout = _IDLE_WAIT_MAX
        if self.next_limit < math.inf:
            timeout = min(timeout, max(self.next_limit - time.monotonic(), 0.0))
        if self.retry_at:
            timeout = min(timeout, max(self.retry_at - time.monotonic(), 0.0))
        if self.loop.loop is not None:
            timeout = min(timeout, BLOCKED_AFTER)  # (to see a blocked loop while it is)
        items = self._inbox(timeout)
        for item in items:
            if isinstance(item, FlightRun):
                self._finish(item, item.settle())
            elif isinstance(item, tuple) and item[0] == _WAKE:
                self.empty = False
                if self.turns is not None and item[1]:
                    self.turns.hinted(item[1])
        if items and any(isinstance(i, FlightRun) for i in items):
            self._after_job()
            if self.jobs_run - self.reaped_at >= _REAP_EVERY:  # (jobs end in batches: no exact multiple)
                self.reaped_at = self.jobs_run
                proctree.reap_adopted()
        self._fire_timers()
        self._write_tally()
        if self.table is not None:
            self.loop.watch(self.flying.values(), self.table, BLOCKED_AFTER)
        if self.retry_at and time.monotonic() >= self.retry_at:
            self.retry_at = 0.0

    def _write_tally(self) -> None:
        """What the jobs did since the last turn, into our report (one write a turn)."""
        if self.tally.dirty:
            if self.spec.board is not None:
                self.spec.board.add_tally(self.spec.slot, self.tally)
            self.tally.clear()

    def _fire_timers(self) -> None:
        """Throws each limit that fell due into its job. The earliest limit is kept, so that
        most turns cost one comparison; a look over the jobs in flight finds the next."""
        now = time.monotonic()
        if now < self.next_limit:
            return
        upcoming = math.inf
        for r in self.flying.values():
            while r.due and r.due[0][0] <= now:
                exc_type = r.due.pop(0)[1]
                if r.outcome is None:
                    r.interrupt(exc_type)
            if r.due:
                upcoming = min(upcoming, r.due[0][0])
        self.next_limit = upcoming

    def _idle_wait(self) -> None:
        """Nothing in flight and nothing to take: wait as a one-job worker does, but on the
        inbox, with the waker blocking in Redis for us. (Two waits on one wake list, ours and
        the waker's, would let the waker take the token and leave us asleep.)"""
        self.rang = False
        self.empty = False
        proctree.reap_adopted()
        status, arg = self.status
        if self.retry_at:  # a start is ours then (aimed a little early): on our own clock
            self.title("throttled")
            timeout = self.retry_at - time.monotonic()
        else:
            self.title({ReserveReply.AT_LIMIT: "waiting for a slot", ReserveReply.PAUSED: "paused"}.get(status, "idle"))
            due = arg / 1000.0 if status == ReserveReply.EMPTY and arg >= 0 and self.turns is None else _IDLE_WAIT_MAX
            timeout = due
            self.waker.arm(self.spec.hint_key if self.turns is not None else self.keys.wake)
        timeout = max(min(self._age_left(timeout), _IDLE_WAIT_MAX), 0.01)
        for item in self._inbox(timeout):
            if isinstance(item, tuple) and item[0] == _WAKE and self.turns is not None and item[1]:
                self.turns.hinted(item[1])
        if self.retry_at and time.monotonic() >= self.retry_at:
            self.retry_at = 0.0

    def _inbox(self, timeout: float) -> list[Any]:
        """What came since the last look (runs that ended, wake-ups), waiting up to ``timeout``
        for the first."""
        items: list[Any] = []
        try:
            items.append(self.inbox.get(timeout=timeout))
            while True:
                items.append(self.inbox.get_nowait())
        except queue.Empty:
            pass
        return items

    def _lane(self) -> QueueKeys | None:
        return self.keys if self.turns is None else self.turns.lane()

    # -- one round trip: settle what finished, reserve for the free slots ------------------

    def _round_trip(self, take: int) -> None:
        lane = self._lane() if take else None
        if lane is None:
            take = 0
        by_tag: dict[str, list[Call]] = {}
        for c in self.settles:
            by_tag.setdefault(hash_tag(c.keys[0]), []).append(c)
        self.settles = []
        slots = [(slot_id(self.id, i), self._next_token()) for i in reversed(self.free[-take:])] if take else []
        groups: list[list[Call]] = []
        calls: list[Call] = []
        if lane is not None:
            reserve = lane.reserve(self.id, "", self.lease_ms, self.spec.rules,
                                   partitions=self.partitions or 0, cluster=is_cluster(self.redis))
            groups.append(by_tag.pop(hash_tag(reserve.keys[0]), []))
            calls.append(flight(groups[0], slots, reserve))
        for group in by_tag.values():
            groups.append(group)
            calls.append(flight(group, [], None))
        if not calls:
            return
        sent = time.monotonic()
        replies = self._redis_retry(lambda: run(self.redis, *calls))
        for group, reply in zip(groups, replies, strict=True):
            for c, result in zip(group, reply[:-1], strict=True):
                _log_settle(self.spec, c, result)
            if group and self.spec.wait[0]:
                self._wait_replicas(group[-1])  # (one WAIT covers every write before it on that node)
        if lane is None:
            return
        reserved = replies[0][-1]
        self.empty = False
        for (_sid, token), reply in zip(slots, reserved, strict=False):
            if reply[0] != ReserveReply.JOB:
                self._not_a_job(reply)
                break
            self._take(list(reply) + [token], lane, sent)
        if self.turns is not None and reserved and reserved[-1][0] == ReserveReply.JOB:
            self.turns.in_a_row += len(reserved)

    def _not_a_job(self, reply: list[Any]) -> None:
        status = ReserveReply(reply[0])
        self.status = status, (reply[1] if len(reply) > 1 else -1)
        if status == ReserveReply.THROTTLED:
            self.retry_at = time.monotonic() + max(reply[1] - self.spec.rules.grace_ms / 2, 0) / 1000.0
        else:
            self.empty = True
            if self.turns is not None:
                self.turns.leave()

    def _take(self, reply: list[Any], lane: QueueKeys, sent: float) -> None:
        """A job reserved for the next free slot: held, then started (a suspect only alone)."""
        index = self.free.pop()
        r = self.flight_run(reply, lane, index)
        self.flying[index] = r
        self.holds += 1
        r.run_no = self.holds
        if len(self.flying) == 1 and self.spec.board is not None:
            self.epoch += 1  # the sentry freezes our tree if no renewal is confirmed by then
            self.spec.board.begin(self.spec.slot, self.epoch, sent + self.lease_ms / 1000.0 - margin(self.spec.lease),
                                  -1 if lane.partition is None else lane.partition)
        if r.suspect:
            self.suspect = r  # nothing more is reserved while it waits or runs
            if len(self.flying) > 1:
                if self.table is not None:  # held, so that the master renews it and knows it
                    self.table.hold(index, r.run_no, r.job.id, r.token, r.handler, lane.partition, len(self.flying))
                    r.held = True
                return  # it starts when the others have ended
        self._start(r)

    def _start(self, r: FlightRun) -> None:
        call = r.prepare()
        if call is not None:  # it cannot run here (bad payload, handler not allowed)
            self._finish(r, call)
            return
        if r.hard and self.table is not None:  # the master kills our tree if it has not ended by then
            r.kill_at = r.started + r.hard + self.grace
            if not self.kill_at or r.kill_at < self.kill_at:
                self.kill_at = r.kill_at
                self.table.kill_at(self.kill_at)
        r.due = [(r.started + limit, exc_type) for limit, exc_type in
                    ((r.soft, SoftTimeLimitExceeded), (r.hard, HardTimeLimitExceeded)) if limit]
        if r.due:
            self.next_limit = min(self.next_limit, r.due[0][0])
        self.executor(r).submit(r)

    def executor(self, r: FlightRun) -> Any:
        """Where the run goes: the event loop for ``async def`` handlers, else a thread (a
        command pool's worker hands it to its program instead)."""
        r.is_async = is_async(r.func)
        return self.loop if r.is_async else self.threads

    def flight_run(self, reply: list[Any], lane: QueueKeys, index: int) -> FlightRun:
        """The run of one reserved job in slot ``index`` (a command pool's runs differ)."""
        return FlightRun(self, reply, lane, index, self.table)

    def _finish(self, r: FlightRun, call: Call) -> None:
        """The run ended: its settle goes out with the next round trip, its slot is free."""
        self.settles.append(call)
        if self.flying.get(r.index) is r:
            del self.flying[r.index]
            self.free.append(r.index)
            if self.table is not None:
                self.table.free(r.index, len(self.flying))
        if not self.flying and self.spec.board is not None:
            self.spec.board.end(self.spec.slot)
        if r.kill_at and r.kill_at == self.kill_at and self.table is not None:
            self.kill_at = min((x.kill_at for x in self.flying.values() if x.kill_at), default=0.0)
            self.table.kill_at(self.kill_at)
        if self.suspect is r:
            self.suspect = None
        elif self.suspect is not None and len(self.flying) == 1 and self.suspect.started == 0.0:
            self._start(self.suspect)  # the others have ended: it runs alone now

    def _title(self) -> None:
        if len(self.flying) != self._titled:
            self._titled = len(self.flying)
            setproctitle(f"governor: worker {self.spec.queue.name}[{self.spec.index}] "
                         f"{len(self.flying)}/{self.size} jobs")
