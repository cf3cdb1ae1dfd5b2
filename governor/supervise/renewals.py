"""The master's lease renewals (runs in: master): every lease its live workers hold, extended
in Redis every ``lease / 3``, and what Redis confirmed told to each worker's guard.

A confirmed renewal sent at ``sent`` proves the lease runs until at least ``sent + lease``:
that (less the margin) becomes the worker's deadline in the scoreboard, which the sentry
enforces (it freezes the worker's tree at that deadline if no later renewal is confirmed),
and a worker the sentry froze meanwhile is thawed. A renewal refused while the worker still
runs the same job means another host has it: the worker is killed. A worker running several
jobs at once (jobs_per_worker) holds a lease per slot; all are renewed in the same call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import redis

from governor.protocol.queue import QueueKeys, run
from governor.supervise.pool import Pool
from governor.supervise.process import State, WorkerProcess
from governor.supervise.runtable import slot_id
from governor.supervise.scoreboard import Scoreboard, margin


class Renewals:
    """Renews the leases of one master's workers."""

    def __init__(self, client: redis.Redis, prefix: str, lease: float, board: Scoreboard,
                 on_lease_lost: Callable[[WorkerProcess, float], None],
                 on_thaw: Callable[[WorkerProcess, float], None]) -> None:
        self.redis, self.prefix, self.lease, self.board = client, prefix, lease, board
        self.on_lease_lost = on_lease_lost  # (worker, cut off since): the master kills it
        self.on_thaw = on_thaw  # (worker, frozen for): the sentry's freeze is lifted

    def renew(self, pools: Mapping[str, Pool]) -> bool:
        """Extends our busy workers' leases, and tells each one's guard what Redis confirmed;
        False when there was nothing to renew (no call made).

        A confirmed renewal sent at ``sent`` proves the lease runs until at least
        ``sent + lease``: that (less the margin) becomes the run's deadline in the scoreboard,
        which the sentry enforces, and a run the sentry froze meanwhile is thawed. A renewal
        refused while the worker still runs the same job means another host has it: the run
        is killed."""
        by_lane: dict[QueueKeys, list[tuple[WorkerProcess, int]]] = {}
        flights: dict[QueueKeys, list[tuple[WorkerProcess, int, int, int]]] = {}
        for pool in pools.values():
            for w in pool:
                if w.state is State.STOPPING:
                    continue
                job = self.board.read(w.slot)[0] if w.slot >= 0 else 0
                if w.runs is not None:  # several jobs: each slot's lease, where its job is
                    w.refresh_jobs()
                    for j in w.jobs.values():
                        flights.setdefault(QueueKeys(self.prefix, pool.name, j.partition), []).append(
                            (w, job, j.index, j.run))
                elif job or w.job is not None:
                    # a worker reserves from one partition at a time: its lease is where its job
                    # is, as the worker wrote it with the job (a 'start' message may lag behind)
                    part = self.board.partition(w.slot) if job else (w.job.partition if w.job else None)
                    by_lane.setdefault(QueueKeys(self.prefix, pool.name, part), []).append((w, job))
        calls, batches = [], []
        for lane, holders in by_lane.items():
            calls.append(lane.renew(int(self.lease * 1000), [w.wid for w, _ in holders]))
            batches.append(holders)
        for lane, slots in flights.items():
            calls.append(lane.renew(int(self.lease * 1000), [slot_id(w.wid, i) for w, _, i, _ in slots]))
        if not calls:
            return False
        sent = time.monotonic()
        replies = run(self.redis, *calls)
        deadline = sent + self.lease - margin(self.lease)
        now = time.monotonic()
        self._renewed_flights(flights, replies[len(batches):], deadline, now)
        for holders, flags in zip(batches, replies[:len(batches)], strict=True):
            if not (isinstance(flags, list) and len(flags) == len(holders)):
                raise ValueError(f"unexpected reply to renew: {flags!r:.80}")
            for (w, job), renewed in zip(holders, flags, strict=True):
                current, previous, frozen = self.board.read(w.slot)
                if not job or current != job:
                    continue  # its handler returned meanwhile: nothing of that run is left to guard
                if renewed:
                    self.board.extend(w.slot, job, deadline)
                    # only while what the renewal proves still holds: a reply read after a long
                    # stall (this master paused) proves a lease that may have ended since
                    if frozen and deadline > time.monotonic():
                        self.on_thaw(w, now - frozen)
                else:
                    # the last deadline we proved was ``previous``: cut off since about then
                    self.on_lease_lost(w, now - (previous - self.lease + margin(self.lease)))
        return True

    def _renewed_flights(self, flights: Mapping[QueueKeys, list[tuple[WorkerProcess, int, int, int]]],
                         replies: list[Any], deadline: float, now: float) -> None:
        """Workers with several jobs: the board's deadline (the sentry's) is extended when
        every job the worker held was renewed. A refusal means another host has that job,
        unless the job ended meanwhile (its settle released the lease): judged on the run table
        as it is now, read after the reply; a worker whose job is someone else's is killed
        (its neighbours go back uncharged)."""
        refused: dict[int, list[tuple[int, int]]] = {}
        seen: dict[int, tuple[WorkerProcess, int]] = {}
        for slots, flags in zip(flights.values(), replies, strict=True):
            if not (isinstance(flags, list) and len(flags) == len(slots)):
                raise ValueError(f"unexpected reply to renew: {flags!r:.80}")
            for (w, epoch, index, run_no), renewed in zip(slots, flags, strict=True):
                seen[w.pid] = (w, epoch)
                if not renewed:
                    refused.setdefault(w.pid, []).append((index, run_no))
        for pid, (w, epoch) in seen.items():
            current, previous, frozen = self.board.read(w.slot)
            if pid in refused:
                if not w.refresh_jobs():
                    continue  # its table is being written: judged at the next renewal
                lost = [i for i, run_no in refused[pid] if (j := w.jobs.get(i)) is not None and j.run == run_no]
                if lost and current == epoch:
                    self.on_lease_lost(w, now - (previous - self.lease + margin(self.lease)))
                    continue
            if epoch and current == epoch:
                self.board.extend(w.slot, epoch, deadline)
                if frozen and deadline > time.monotonic():
                    self.on_thaw(w, now - frozen)
