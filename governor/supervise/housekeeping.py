"""The master's duties in Redis: requeue the jobs of dead workers, renew live leases,
reclaim expired ones, promote delayed jobs, expire done records, keep queue figures.

Kept apart from the arbiter so that the process lifecycle (master.py) and the
Redis bookkeeping each have one owner. Every call here tolerates Redis being
away: what fails is retried on a later pass, and the outage is counted by the
master's one ``RedisHealth`` (redishealth.py), which the other duties share.

Runs in: master.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from governor.identity import is_local_and_dead, pid_of
from governor.log import fields
from governor.protocol import scripts
from governor.protocol.queue import FailOutcome, QueueKeys, parse_lease, run
from governor.supervise.pool import Pool
from governor.supervise.process import State, WorkerProcess
from governor.supervise.redishealth import REPLY_ERRORS, RedisHealth
from governor.supervise.renewals import Renewals
from governor.supervise.runtable import owner_of
from governor.supervise.scoreboard import Scoreboard
from governor.units import format_size
from governor.untrusted import loads

log = logging.getLogger("governor.master")

TICK_BUSY = 1.0   # seconds between passes over a queue with waiting, delayed or active jobs
TICK_IDLE = 15.0  # ... and over an empty one (keeps an idle host well under 1 Redis command/s)
# ... and over an empty partition held a while: only its holder's workers take its jobs, and
# producers' hints mark it touched (see look_now), so nothing arrives there unseen
TICK_IDLE_PARTITION = 300.0



SETTLE_BATCH = 100  # lost jobs requeued per pair of round trips (a bounded pipeline)


@dataclass
class LostJob:
    """A job whose worker died holding it, waiting to be requeued (retried while Redis is down)."""

    queue: str
    wid: str
    pid: int
    reason: str
    description: str
    mode: str  # 'retry' counts the attempt; 'requeue' does not
    seconds: float | None
    known: tuple[str, str] | None  # (id, token) from the worker's last 'start' message
    max_retries: int
    detail: dict[str, Any]  # measured figures: peak memory, limit, signal or exit code
    partitions: tuple[int | None, ...] = (None,)  # where its lease may be: the job's partition if
    # known, else every partition of its queue
    handler: str | None = None  # the job's handler, when known
    keep: int = 0  # killed at a learnt limit (timeout.adaptive): run times kept, its sample among them

    def why(self) -> str:
        """The reason with its measured figure, as an operator reads it in `governor status`."""
        d = self.detail
        figure = f": {format_size(d['memory'])} > {format_size(d['limit'])}" if "memory" in d else ""
        if self.reason == "neighbour_killed":
            return f"for another job's {d.get('beside')}; this one not charged"
        if self.mode == "suspect":
            return f"{self.reason}{figure} with several jobs running; not charged, it runs alone next"
        if self.reason == "memory_hard" and figure:
            return f"memory_hard{figure}"
        if self.reason == "timeout_hard" and self.seconds is not None:
            return f"timeout_hard: ran {self.seconds:.2f}s, limit {d.get('limit')}s"
        return self.reason


class Housekeeper:
    """The master's bookkeeping in Redis, pass by pass: leases renewed, queues ticked, the jobs
    of dead workers requeued; ``health`` says whether Redis is there to do it."""

    def __init__(self, client: redis.Redis, prefix: str, lease: float, board: Scoreboard,
                 on_lease_lost: Callable[[WorkerProcess, float], None],
                 on_thaw: Callable[[WorkerProcess, float], None], health: RedisHealth) -> None:
        self.redis = client
        self.health = health  # shared with the other duties: one outage, one probe
        self.prefix = prefix
        self.lease = lease
        self.renewals = Renewals(client, prefix, lease, board, on_lease_lost, on_thaw)
        self.lost: list[LostJob] = []
        self.next_tick: dict[QueueKeys, float] = {}
        self.next_renew = 0.0
        self.lane_stats: dict[QueueKeys, dict[str, Any]] = {}
        self.lanes: dict[str, list[int | None]] = {}  # per queue, the lanes ticked (set by run)
        # partitions acquired lately: until then, another master's worker may still have taken
        # a job there (a handover), so they are looked at twice per lease like a queue
        self.fresh_until: dict[QueueKeys, float] = {}
        self.on_ready: Callable[[str, int, int], None] = lambda queue, partition, waiting: None

    def keys(self, queue: str, partition: int | None = None) -> QueueKeys:
        return QueueKeys(self.prefix, queue, partition)

    # -- jobs of dead workers ----------------------------------------------------------

    def recover_predecessor(self, pools: Mapping[str, Pool]) -> None:
        """Requeues at once the jobs of this host's workers that died with a previous master
        (SIGKILL, OOM, power loss): their leases name processes that no longer exist."""
        try:
            for name, pool in pools.items():
                for part in all_lanes(pool.config):
                    for wid, held in self.redis.hgetall(self.keys(name, part).leases).items():
                        wid = wid.decode()
                        if is_local_and_dead(owner_of(wid)):
                            job_id, token = parse_lease(held)
                            self.lost.append(LostJob(
                                queue=name, wid=wid, pid=pid_of(owner_of(wid)), reason="orphaned",
                                description="died with its master", mode="requeue", seconds=None,
                                known=(job_id, token), max_retries=pool.config.settings.retry.max,
                                detail={}, partitions=(part,)))
        except (redis.RedisError, *REPLY_ERRORS) as exc:
            self.health.failed(exc)  # the leases will expire instead
        if self.lost:
            log.info("recovering %d job(s) left by workers of a previous master", len(self.lost))
            self.settle_lost()

    def lose(self, lost: LostJob) -> None:
        """Takes the job of a worker that died; the master's next pass requeues it, with every
        other one that died in the same batch of exits (``settle_lost``)."""
        self.lost.append(lost)

    def settle_lost(self) -> None:
        """Requeues the jobs of dead workers, a batch in two round trips however many died
        together (a wave of kills); what Redis refuses now is tried again later. Safe to
        repeat: a fail already applied under the same token answers as before."""
        while self.lost:
            batch = self.lost[:SETTLE_BATCH]
            try:
                # Redis knows the lease even when the worker died before telling us its job
                where = [(lost, part) for lost in batch for part in lost.partitions]
                pipe = self.redis.pipeline(transaction=False)
                for lost, part in where:
                    pipe.hget(self.keys(lost.queue, part).leases, lost.wid)
                for lost in batch:  # a rate limit's ticket it held: nobody else can use it
                    if None in lost.partitions:
                        pipe.hdel(self.keys(lost.queue).tickets, lost.wid)
                found = dict.fromkeys(id(lost) for lost in batch)
                for (lost, part), raw in zip(where, pipe.execute()[:len(where)], strict=True):
                    if raw and found[id(lost)] is None:
                        found[id(lost)] = (part, parse_lease(raw))
                settles = []
                for lost in batch:
                    part, held = found[id(lost)] or (lost.partitions[0], None)
                    held = held or lost.known
                    if held:
                        keys = self.keys(lost.queue, part)
                        error = {"reason": lost.reason, "worker": lost.wid, "seconds": lost.seconds,
                                 "error": f"worker pid {lost.pid} {lost.description} ({lost.why()}) "
                                          "while running the job", **lost.detail}
                        settles.append((lost, keys, held, keys.fail(
                            held[0], held[1], lost.wid, error, lost.mode, 0, lost.reason,
                            lost.max_retries)))
                replies = run(self.redis, *(c for *_, c in settles)) if settles else []
                censored = [(lost, keys, held) for lost, keys, held, _ in settles if lost.keep and lost.handler]
                if censored:
                    self._censor(censored)
                for (lost, keys, held, _), reply in zip(settles, replies, strict=True):
                    outcome = _expect_outcome(reply)
                    log_requeue(lost.queue, held[0], lost.reason, outcome)
                    if keys.partition is not None and outcome in (FailOutcome.REQUEUED, FailOutcome.RETRYING):
                        self.on_ready(lost.queue, keys.partition, 1)  # at once, not at the next tick
            except (redis.RedisError, *REPLY_ERRORS) as exc:
                self.health.failed(exc)
                return
            del self.lost[:len(batch)]

    def _censor(self, killed: list[tuple[LostJob, QueueKeys, tuple[str, str]]]) -> None:
        """Runs killed at their learnt limit: each is a censored sample of its handler's run
        time (it needed at least the limit: handlers.lua counts it there, so the limit cannot
        ratchet itself down) and a kill in the window that makes the handler fall back."""
        run(self.redis, *(keys.censor(lost.handler, int(float(lost.detail.get("limit_s") or 0) * 1000),
                                      lost.keep, held[0]) for lost, keys, held in killed))

    # -- the periodic pass -------------------------------------------------------------

    def run(self, now: float, pools: Mapping[str, Pool], lanes: Mapping[str, list[int | None]]) -> None:
        """``lanes``: per queue, what this master ticks (a partitioned queue: the partitions it
        holds)."""
        self.lanes = dict(lanes)
        for lane in [lane for lane in self.next_tick if lane.partition not in lanes.get(lane.queue, ())]:
            self.next_tick.pop(lane)  # a partition handed over: its new holder looks after it
            self.lane_stats.pop(lane, None)
        if not self.health.reachable(now):
            return
        if self.lost:
            self.settle_lost()
        due = [lane for lane in (self.keys(name, part) for name, parts in lanes.items() for part in parts)
               if self.next_tick.get(lane, 0.0) <= now]
        try:
            # renew first: after a stall longer than the lease, our own workers' leases must be
            # extended before the tick looks for expired ones
            if now >= self.next_renew:
                if self.renewals.renew(pools):
                    self.health.succeeded()
                self.next_renew = now + self.lease / 3
            if due:
                self._tick(due, now, pools)
                self.health.succeeded()
        except (redis.RedisError, *REPLY_ERRORS) as exc:
            self.health.failed(exc)
            later = time.monotonic() + TICK_BUSY  # not `now`: the failed call may have taken a while
            for lane in due:
                self.next_tick[lane] = later
            self.next_renew = max(self.next_renew, later)

    def next_wakeup(self, now: float) -> float:
        if not self.health.ok:
            return self.health.next_probe_at(now)
        return min([now + TICK_IDLE, self.next_renew, *self.next_tick.values()]
                   + ([now + 1.0] if self.lost else []))

    def touch(self, queue: str, now: float, partition: int | None = None) -> None:
        """Something happened in this queue (in this partition of it, if known): look at it
        within TICK_BUSY, not TICK_IDLE."""
        parts = [partition] if partition is not None else self.lanes.get(queue, [None])
        for part in parts:
            lane = self.keys(queue, part)
            self.next_tick[lane] = min(self.next_tick.get(lane, now), now + TICK_BUSY)

    def look_now(self, queue: str, partitions: list[int], fresh: bool = False) -> None:
        """Partitions just acquired (``fresh``) or touched by producers: ticked on the next
        pass, which hints idle workers to what is ready there."""
        for part in partitions:
            lane = self.keys(queue, part)
            self.next_tick[lane] = 0.0
            if fresh:
                self.fresh_until[lane] = time.monotonic() + 2 * self.lease

    def load_library(self) -> None:
        """governor's function library on every primary at start (scripts.prepare); a node
        that loses it later (a restart, a failover) gets it again on the first call to miss it."""
        try:
            scripts.prepare(self.redis)
        except (redis.RedisError, *REPLY_ERRORS) as exc:
            self.health.failed(exc)

    def register_queues(self, queues: Iterable[str]) -> None:
        """Our queues join the prefix's list of queues (as a Python producer's first enqueue
        does), so status, the page and the job commands know them whoever produces to them."""
        names = list(queues)
        if not names:
            return
        try:
            self.redis.sadd(f"{self.prefix}:queues", *names)
        except (redis.RedisError, *REPLY_ERRORS) as exc:
            self.health.failed(exc)

    def forget(self, queue: str) -> None:
        for lane in [lane for lane in self.next_tick if lane.queue == queue]:
            self.next_tick.pop(lane)
        for lane in [lane for lane in self.lane_stats if lane.queue == queue]:
            self.lane_stats.pop(lane)
        self.lanes.pop(queue, None)

    def _tick(self, lanes: list[QueueKeys], now: float, pools: Mapping[str, Pool]) -> None:
        """Promote due delayed jobs, expire done records, reclaim expired leases."""
        calls = [lane.tick(int(pools[lane.queue].config.settings.done_ttl * 1000)) for lane in lanes]
        for lane, reply in zip(lanes, run(self.redis, *calls), strict=True):
            name, part = lane.queue, lane.partition
            if not (isinstance(reply, list) and len(reply) >= 12 and len(reply) % 2 == 0
                    and all(isinstance(x, int) for x in reply[:12])):
                raise ValueError(f"unexpected reply to tick: {reply!r:.80}")
            next_due, (waiting, delayed, active, dead, done), oldest = reply[1], reply[2:7], reply[7]
            next_expiry, throttled, paused = reply[8], reply[9], reply[10]
            self.lane_stats[lane] = {
                "waiting": waiting, "delayed": delayed, "active": active, "dead": dead, "done": done,
                "at": now, "oldest_age": oldest / 1000.0 if oldest >= 0 else None,
                "throttled": throttled, "paused": bool(paused)}
            if part is not None and reply[11] and not paused:
                self.on_ready(name, part, reply[11])
            # An idle-looking queue is still looked at twice per lease: another host may have
            # taken a job since and died with it. A lease seen running out is reclaimed at once.
            idle = min(TICK_IDLE, self.lease / 2)
            if part is not None and self.fresh_until.get(lane, 0.0) < now:
                self.fresh_until.pop(lane, None)
                idle = TICK_IDLE_PARTITION
            interval = TICK_BUSY if (active or waiting or next_due >= 0) else idle
            for ms in (next_due, next_expiry):
                if ms >= 0:
                    interval = min(interval, ms / 1000.0 + 0.005)
            self.next_tick[lane] = now + interval
            expired = reply[12:]
            for i in range(0, len(expired), 2):
                self._reclaim(lane, expired[i].decode(errors="surrogateescape"), expired[i + 1],
                              pools)

    def _reclaim(self, lane: QueueKeys, job_id: str, raw_meta: bytes, pools: Mapping[str, Pool]) -> None:
        queue = lane.queue
        try:
            meta = loads(raw_meta, "the job's record")
        except ValueError:
            meta = {}
        if not isinstance(meta, dict):
            meta = {}
        token, holder = str(meta.get("token") or ""), str(meta.get("worker") or "?")
        owner = owner_of(holder)  # (a slot's lease names its worker)
        if any(w.wid == owner and w.state is not State.STOPPING for p in pools.values() for w in p):
            self.next_renew = 0.0  # ours and alive: renew it, never take it away
            return
        error = {"reason": "lease_expired", "worker": holder,
                 "error": f"lease of worker {holder} expired (its host or master stopped renewing it)"}
        call = lane.fail(job_id, token, holder, error, "retry", 0, "lease_expired",
                                     pools[queue].config.settings.retry.max)
        outcome = _expect_outcome(run(self.redis, call)[0])
        log_requeue(queue, job_id, "lease_expired", outcome)

    def stats(self, queue: str, now: float) -> dict[str, Any]:
        """The queue's figures from the last pass (summed over the partitions this master
        holds), the oldest job's age brought up to now."""
        parts = [s for lane, s in self.lane_stats.items() if lane.queue == queue]
        if not parts:
            return {}
        stats: dict[str, Any] = {name: sum(s[name] for s in parts)
                                 for name in ("waiting", "delayed", "active", "dead", "done")}
        stats["throttled"] = max(s["throttled"] for s in parts)
        stats["paused"] = any(s["paused"] for s in parts)
        ages = [s["oldest_age"] + now - s["at"] for s in parts if s["oldest_age"] is not None]
        stats["oldest_age"] = max(ages) if ages else None  # still waiting, so older by now
        stats["at"] = min(s["at"] for s in parts)
        return stats

    def waiting(self) -> int:
        return sum(int(s.get("waiting", 0)) for s in self.lane_stats.values())


def all_lanes(config: Any) -> list[int | None]:
    """Every partition of a queue (its own keys if it has none)."""
    return list(range(config.partitions)) if config.partitions else [None]


def _expect_outcome(reply: Any) -> int:
    """fail.lua answers 0-3; anything else means the connection is out of step."""
    if not isinstance(reply, int) or not 0 <= reply <= 3:
        raise ValueError(f"unexpected reply to fail: {reply!r:.80}")
    return reply


def log_requeue(queue: str, job_id: str, reason: str, outcome: int) -> None:
    extra = fields(queue=queue, job=job_id, reason=reason)
    if outcome == FailOutcome.REQUEUED:
        log.info("job %s requeued (%s)", job_id, reason, extra=extra)
    elif outcome == FailOutcome.RETRYING:
        log.warning("job %s will be retried (%s)", job_id, reason, extra=extra)
    elif outcome == FailOutcome.DEAD:
        log.error("job %s dead-lettered (%s)", job_id, reason, extra=extra)
