"""An operator's operations on a queue and its jobs, from the CLI, the ``Client`` or the web
page: pause and resume, list, retry, cancel, delete and purge, each in bounded script calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from governor.protocol.client_base import ClientBase, _check_queue_name
from governor.protocol.keys import JOB_STATES, QueueKeys
from governor.protocol.records import _record
from governor.protocol.retried import Retried, held_text, holder
from governor.protocol.scripts import run

OPS_BATCH = 500  # jobs per script call of an operation over many (retry --all, purge): bounded work
SEARCH_BATCH = 100  # ... and jobs looked at per call of a text search (it reads their payloads)


def _cursor(cursor: str | None, lanes: int) -> tuple[int, int]:
    """A page cursor of ``Client.jobs``: 'lane.offset'."""
    if not cursor:
        return 0, 0
    lane, _, offset = cursor.partition(".")
    if not (lane.isdigit() and offset.isdigit()) or int(lane) >= lanes:
        raise ValueError(f"not a cursor from a previous page: {cursor!r}")
    return int(lane), int(offset)


class QueueOperations(ClientBase):
    """Pausing a queue and operating on its jobs; ``Client`` inherits them."""

    # -- pause ----------------------------------------------------------------

    def pause(self, queue: str) -> bool:
        """Stops every host from starting jobs of the queue (running jobs finish); the flag
        lives in Redis (at the queue's home, and in each partition of a partitioned queue), so
        it holds fleet-wide and across master restarts, and from the moment it is acknowledged,
        also when given before any master started the queue. Returns False if the queue was
        already paused."""
        self._register(queue)  # so `status` lists a paused queue nobody has enqueued to yet
        self._register_partitions(queue)
        # the queue's home first, then the partitions the count names: a master registering the
        # count meanwhile copies the home flag into every partition (register_partitions)
        paused = self.redis.setnx(self.keys(queue).paused, "1")
        pipe = self.redis.pipeline(transaction=False)
        for lane in self.lanes(queue):
            if lane.partition is not None:
                pipe.setnx(lane.paused, "1")
        return any([paused, *(pipe.execute() if len(pipe) else ())])

    def resume(self, queue: str) -> bool:
        """Lets the queue's jobs start again, and wakes idle workers on every host at once
        (one token per waiting job, as an enqueue does) rather than at their next timeout.
        Returns False if the queue was not paused."""
        _check_queue_name(queue)
        home_paused = self.redis.delete(self.keys(queue).paused)  # (before the count is read, as pause)
        lanes = self.lanes(queue)
        pipe = self.redis.pipeline(transaction=False)
        for k in lanes:
            pipe.delete(k.paused)
            pipe.zcard(k.waiting)
            pipe.zcard(k.delayed)
        replies = pipe.execute()
        resumed, hints = bool(home_paused), {}
        pipe = self.redis.pipeline(transaction=False)
        for i, k in enumerate(lanes):
            was_paused, waiting, delayed = replies[3 * i:3 * i + 3]
            was_paused = was_paused or (k.partition is None and home_paused)
            resumed = resumed or bool(was_paused)
            # a delayed job wakes one idle worker too, so it re-arms its timer (as enqueue.lua does)
            tokens = min(waiting, 512) or (1 if delayed else 0)
            if was_paused and tokens:
                if k.partition is None:
                    pipe.rpush(k.wake, *["1"] * tokens)
                    pipe.ltrim(k.wake, -4096, -1)
                else:
                    hints[k.partition] = tokens
        if hints:
            run(self.redis, self.keys(queue).hint(hints))
        elif len(pipe):
            pipe.execute()
        return resumed

    def paused(self, queue: str) -> bool:
        return bool(self.redis.exists(self.lanes(queue)[0].paused))

    # -- operations on jobs ---------------------------------------------------------
    def known_queue(self, queue: str) -> None:
        """Raises ValueError naming the queue unless some client or master has used it."""
        if self.redis.sismember(f"{self.prefix}:queues", queue):
            return
        known = self.registry(limit=20)[0]  # (an example: the registry may hold many)
        raise ValueError(f"no queue named {queue!r} under prefix {self.prefix!r} (known: "
                         f"{', '.join(known) or 'none'})")

    def jobs(self, queue: str, state: str = "dead", limit: int = 20, cursor: str | None = None,
             handler: str | None = None, search: str | None = None,
             payloads: bool = True) -> tuple[list[dict[str, Any]], str | None]:
        """One page of a queue's jobs in ``state``, newest first, and the cursor of the next page
        (None: the last). ``handler`` keeps one handler's; ``search`` a case-insensitive text
        in the arguments or the errors. Filtered in Redis, at most OPS_BATCH jobs looked at per
        call (SEARCH_BATCH with a search, which reads payloads), so a million dead jobs never
        block it. ``payloads=False``: records without arguments (a page of errors)."""
        self.known_queue(queue)
        if not 1 <= limit <= 10_000:
            raise ValueError(f"limit must be from 1 to 10000, got {limit}")
        lanes = self.lanes(queue)
        lane, offset = _cursor(cursor, len(lanes))
        out: list[dict[str, Any]] = []
        while lane < len(lanes) and len(out) < limit:
            reply = run(self.redis, lanes[lane].list_jobs(state, offset, limit - len(out),
                                                          SEARCH_BATCH if search else OPS_BATCH, handler or "",
                                                          search or "", "full" if payloads else "record"))[0]
            for i in range(1, len(reply), 3):
                out.append(_record(queue, reply[i].decode(errors="surrogateescape"), reply[i + 1], reply[i + 2]))
            offset = int(reply[0])
            if offset < 0:
                lane, offset = lane + 1, 0
        return out, (f"{lane}.{offset}" if lane < len(lanes) else None)

    def _lanes_of(self, queue: str, ids: Sequence[str]) -> dict[int, list[str]]:
        """Each job's lane (index into ``lanes``), found by its record; unknown ids under -1."""
        lanes = self.lanes(queue)
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            for lane in lanes:
                pipe.hexists(lane.meta, job_id)
        found = pipe.execute()
        out: dict[int, list[str]] = {}
        for i, job_id in enumerate(ids):
            where = [n for n in range(len(lanes)) if found[i * len(lanes) + n]]
            out.setdefault(where[0] if where else -1, []).append(job_id)
        return out

    def retry(self, queue: str, ids: Sequence[str] = (), all: bool = False, handler: str | None = None,
              search: str | None = None) -> Retried:
        """Dead jobs back to waiting, attempts reset, their errors kept; returns how many (a
        ``Retried``). By id: every one must be retryable, else ValueError names those that are
        not and nothing changes. Else every dead job (``all``), or those ``handler``/``search``
        select, in batches of OPS_BATCH (each batch atomic), the longest dead first.

        A job with an ordering key goes back in its key's enqueue order (retry.lua says exactly
        what that is), whatever order it is named in. A dead job whose unique key another live
        job holds is not retried (two live jobs of one unique key): by id that is an error; with
        a filter it is skipped and listed in ``Retried.skipped``."""
        self.known_queue(queue)
        lanes = self.lanes(queue)
        if ids:
            by_lane = self._lanes_of(queue, list(ids))
            if -1 in by_lane:
                raise ValueError(f"no such job in queue {queue!r}: {', '.join(by_lane[-1][:10])}")
            codes: dict[str, Any] = {}
            for n, group in by_lane.items():  # checked everywhere before anything changes
                codes.update(zip(group, run(self.redis, lanes[n].retry(group, mode="check"))[0][1:], strict=True))
            not_dead = [i for i, c in codes.items() if c == 0 or c == -1]
            if not_dead:
                states = {i: (self.job(i, queue) or {}).get("state") for i in not_dead[:10]}
                raise ValueError("only dead jobs can be retried; not dead: "
                                 + ", ".join(f"{i} ({s})" for i, s in states.items()))
            held = [(i, *holder(c)) for i, c in codes.items() if isinstance(c, list)]
            if held:
                raise ValueError("nothing retried: " + "; ".join(held_text(*h) for h in held[:10]))
            done = 0
            for n, group in by_lane.items():
                reply = run(self.redis, lanes[n].retry(group, mode="strict"))[0]
                if not reply[0]:
                    raise ValueError(f"jobs changed state meanwhile; nothing retried in this batch: {group[:10]}")
                done += self._retried(lanes[n], reply[1:], group, [])
            return Retried(done)
        if not (all or handler or search):
            raise ValueError("name the jobs: ids, all=True, or a handler/search filter")
        done, skipped = 0, []
        for lane in lanes:
            # the ids first, scanned in bounded calls; then retried in batches (each atomic): a
            # job retried meanwhile by someone else is skipped, never retried twice
            ids_found, offset = [], 0
            while offset >= 0:
                reply = run(self.redis, lane.list_jobs("dead", offset, OPS_BATCH,
                                                       SEARCH_BATCH if search else OPS_BATCH, handler or "",
                                                       search or "", "ids"))[0]
                ids_found += [reply[i].decode(errors="surrogateescape") for i in range(1, len(reply), 3)]
                offset = int(reply[0])
            ids_found.reverse()  # the longest dead first: a key's jobs died in its order
            for i in range(0, len(ids_found), OPS_BATCH):
                batch = ids_found[i:i + OPS_BATCH]
                reply = run(self.redis, lane.retry(batch, mode="any"))[0]
                done += self._retried(lane, reply[1:], batch, skipped)
        return Retried(done, skipped)

    def _retried(self, lane: QueueKeys, codes: Sequence[Any], ids: Sequence[str],
                 skipped: list[tuple[str, str, str]]) -> int:
        """Counts a retry call's jobs sent back, adds those its unique key kept dead to
        ``skipped``, and hints the partition's holder (its workers wait on hints, not on the
        lane) that jobs are ready."""
        n = sum(1 for c in codes if c == 1)
        skipped += [(i, *holder(c)) for i, c in zip(ids, codes, strict=True) if isinstance(c, list)]
        if n and lane.partition is not None:
            run(self.redis, self.keys(lane.queue).hint({lane.partition: n}))
        return n

    def cancel(self, queue: str, job_id: str) -> None:
        """A waiting or delayed job is removed before it runs (state ``cancelled``); anything
        else raises ValueError saying why, and nothing changes."""
        self.known_queue(queue)
        by_lane = self._lanes_of(queue, [job_id])
        if -1 in by_lane:
            raise ValueError(f"no such job in queue {queue!r}: {job_id}")
        (n, _), = by_lane.items()
        if run(self.redis, self.lanes(queue)[n].cancel([job_id]))[0][0] != 1:
            state = (self.job(job_id, queue) or {}).get("state")
            raise ValueError(f"job {job_id} is {state}: only a waiting or delayed job can be cancelled")

    def delete(self, queue: str, job_id: str) -> None:
        """Deletes one dead job and its record, for good; anything else raises ValueError."""
        self.known_queue(queue)
        by_lane = self._lanes_of(queue, [job_id])
        if -1 in by_lane:
            raise ValueError(f"no such job in queue {queue!r}: {job_id}")
        (n, _), = by_lane.items()
        if run(self.redis, self.lanes(queue)[n].purge("dead", 1, [job_id]))[0][0] != 1:
            state = (self.job(job_id, queue) or {}).get("state")
            raise ValueError(f"job {job_id} is {state}: only a dead job can be deleted")

    def purge(self, queue: str, state: str) -> int:
        """Deletes every job of ``state`` (dead, waiting, delayed or done) and its record, in
        batches of OPS_BATCH; returns how many. Never ``active`` (running) jobs."""
        self.known_queue(queue)
        if state == "active":
            raise ValueError("active jobs are running: they cannot be purged (cancel waiting ones, or "
                             "let the running ones finish)")
        if state not in JOB_STATES:
            raise ValueError(f"state must be one of waiting, delayed, dead, done; got {state!r}")
        total = 0
        for lane in self.lanes(queue):
            while True:
                purged, left = run(self.redis, lane.purge(state, OPS_BATCH))[0]
                total += purged
                if not left or not purged:
                    break
        return total

    def dead(self, queue: str, limit: int = 20) -> list[dict[str, Any]]:
        """The most recently dead-lettered jobs of a queue, newest first."""
        pipe = self.redis.pipeline(transaction=False)
        for lane in self.lanes(queue):
            pipe.zrevrange(lane.dead, 0, limit - 1, withscores=True)
        newest = sorted((e for lane in pipe.execute() for e in lane), key=lambda e: -e[1])[:limit]
        return [r for r in (self.job(i.decode(), queue) for i, _ in newest) if r]
