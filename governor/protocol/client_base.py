"""What every part of ``Client`` stands on: its connection, a queue's keys and lanes (its
partitions), the queue registry, and reading a job's record and a queue's counts.

``Client`` (client.py) adds the enqueue path, ``QueueOperations`` (client_ops.py) an
operator's operations: three classes, one job each, that ``Client`` joins by inheritance
(its methods and their names are those it always had).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import redis

from governor.config import MAX_PARTITIONS
from governor.names import queue_name_problem
from governor.protocol.keys import QueueKeys
from governor.protocol.records import _record, partition_count, register_partitions
from governor.protocol.scripts import Call, run

DEFAULT_MAX_PAYLOAD = 1024 * 1024
MAX_QUEUES_READ = 1000  # registry entries one read looks at (any client can add names)
MAX_NAME_BYTES = 256  # a longer registered name is no queue's (the config's rule allows 64)
MAX_REGISTRY_BYTES = 1 << 20  # a registry bigger than this (MEMORY USAGE) is not read


def _check_queue_name(queue: object) -> None:
    """The rule ``check`` applies to the config's queues (names.py): a name it refuses could
    reach another queue's keys (``q:1`` are partition 1's of ``q``)."""
    problem = queue_name_problem(queue)
    if problem:
        raise ValueError(f"bad queue name {queue!r}: {problem}")


class ClientBase:
    """A queue's keys and lanes, the registry and records: the ground floor of ``Client``."""

    def __init__(self, connection: redis.Redis, prefix: str = "governor",
                 max_payload: int = DEFAULT_MAX_PAYLOAD, wait: tuple[int, float] = (0, 0.0),
                 partitions: Mapping[str, int] | None = None) -> None:
        """``wait``: (replicas, timeout seconds) that every enqueue waits for (``redis.wait``);
        fewer raises NotReplicated after the jobs are queued. ``partitions``: queue -> its
        partition count (``partitions:`` in the config): this client registers it as a master
        would, so keyed jobs can be queued before any master has started the queue, and
        refuses to enqueue to (or pause) a queue whose count in Redis differs."""
        self.redis = connection
        self.prefix = prefix
        self.max_payload = max_payload
        self.wait = wait
        self._registered: set[str] = set()
        self._partitions: dict[str, int] = {}  # queue -> its partition count (it never changes)
        self._told: dict[str, int] = {}
        for queue, n in (partitions or {}).items():
            _check_queue_name(queue)
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_PARTITIONS:
                raise ValueError(f"the partition count of queue {queue!r} must be an integer from 1 to "
                                 f"{MAX_PARTITIONS}, got {n!r}")
            self._told[queue] = n

    def keys(self, queue: str) -> QueueKeys:
        return QueueKeys(self.prefix, queue)

    def partitions(self, queue: str) -> int | None:
        """The queue's partition count, as its masters registered it; None: not partitioned."""
        n = self._partitions.get(queue)
        if n is None:
            raw = self.redis.get(self.keys(queue).partitions_key)
            if raw is None:
                return None
            n = self._partitions[queue] = partition_count(queue, raw)
        return n

    def partition_holders(self, queue: str) -> dict[int, str]:
        """partition -> the master holding its lease (``host:boot:pidns:pid:start``)."""
        key = self.keys(queue).home().key("holders")
        if self.redis.hlen(key) > MAX_PARTITIONS:  # (any client can write it: read it only if sane)
            raise ValueError(f"queue {queue!r}: its partition holders hash has more than {MAX_PARTITIONS} "
                             "entries; not read")
        raw = self.redis.hgetall(key)
        return {int(p): m.decode(errors="replace")[:200] for p, m in raw.items()
                if p.isdigit() and len(p) <= 5}

    def lanes(self, queue: str) -> list[QueueKeys]:
        """Where the queue's jobs live: its own keys, or each of its partitions' keys."""
        n = self.partitions(queue)
        keys = self.keys(queue)
        return [keys] if n is None else [keys.part(i) for i in range(n)]

    def _register_partitions(self, queue: str) -> None:
        """Once per client and queue it was told the partition count of: registers it as a
        master would (``register_partitions``), or refuses the count Redis holds if it differs."""
        told = self._told.get(queue)
        if told is None or queue in self._partitions:
            return
        stored = register_partitions(self.redis, self.keys(queue), told)
        if stored != told:
            raise ValueError(f"queue {queue!r} has {stored} partitions in Redis, but this client was told "
                             f"{told} (the config's partitions:): a key's jobs would go to another partition "
                             f"than its earlier ones; fix the config, or drain the queue and delete "
                             f"{self.keys(queue).partitions_key}")
        self._partitions[queue] = stored

    def _register(self, queue: str) -> None:
        """Once per client and queue: lets ``job(id)`` and ``status`` find the queue."""
        _check_queue_name(queue)
        if queue not in self._registered:
            self.redis.sadd(f"{self.prefix}:queues", queue)
            self._registered.add(queue)

    def queues(self) -> list[str]:
        """The queues clients have enqueued to under this prefix (at most MAX_QUEUES_READ of
        them; names that do not decode are left out: see :meth:`registry`)."""
        return self.registry()[0]

    def registry(self, limit: int = MAX_QUEUES_READ) -> tuple[list[str], list[str], int]:
        """The queue registry as read in bounded calls: (names, unreadable, left unread).

        Any client, in any language, can add a name, so the registry is untrusted: a name that
        is not UTF-8 or longer than MAX_NAME_BYTES is not a queue any command can act on; it
        comes back in ``unreadable``, shown as bytes, never used. At most ``limit`` entries are
        read (SSCAN), however many there are; ``left unread`` says how many more exist. A
        registry of more than MAX_REGISTRY_BYTES (names of megabytes: SSCAN cannot skip a
        member, it copies it whole) is not read at all: ValueError saying so."""
        key = f"{self.prefix}:queues"
        try:
            size = self.redis.memory_usage(key, samples=0)
        except redis.ResponseError:  # (MEMORY disabled on this server: names are filtered as read)
            size = None
        if size is not None and size > MAX_REGISTRY_BYTES:
            raise ValueError(f"the queue registry {key} holds {size} bytes, more than {MAX_REGISTRY_BYTES} "
                             f"(names longer than {MAX_NAME_BYTES} bytes were added to it); not read: remove "
                             f"them (SSCAN and SREM)")
        names: list[str] = []
        unreadable: list[str] = []
        seen, cursor = 0, b"0"
        while True:  # (filtered in Redis: a name of a megabyte never crosses the wire)
            reply = run(self.redis, Call("registry", (key,), (cursor, min(limit - seen, 500), MAX_NAME_BYTES)))[0]
            cursor, n = reply[0], int(reply[1])
            for i, raw in enumerate(reply[2:2 + limit - seen]):  # (COUNT is a hint: SSCAN may send more)
                try:
                    if i >= n:
                        raise ValueError  # longer than MAX_NAME_BYTES: its first 64 bytes
                    names.append(raw.decode())
                except (UnicodeDecodeError, ValueError):
                    unreadable.append(repr(raw[:64])[2:-1] + ("..." if i >= n or len(raw) > 64 else ""))
            seen += min(len(reply) - 2, limit - seen)
            if cursor in (b"0", 0) or seen >= limit:
                break
        more = max(0, int(self.redis.scard(key)) - seen) if cursor not in (b"0", 0) else 0
        return sorted(set(names)), sorted(set(unreadable)), more

    def job(self, job_id: str, queue: str | None = None) -> dict[str, Any] | None:
        """The job's record (state, attempts, errors, result...), or None if unknown or expired."""
        queues = [queue] if queue else self.queues()
        lanes = [(q, lane) for q in queues for lane in self.lanes(q)]
        pipe = self.redis.pipeline(transaction=False)
        for _, lane in lanes:
            pipe.hget(lane.meta, job_id)
            pipe.hget(lane.data, job_id)
        replies = pipe.execute()
        for i, (q, _) in enumerate(lanes):
            meta, payload = replies[2 * i], replies[2 * i + 1]
            if meta is not None:
                return _record(q, job_id, meta, payload)
        return None

    def counts(self, queue: str, lanes: Sequence[QueueKeys] | None = None) -> dict[str, Any]:
        """How many jobs are in each state (a partitioned queue's summed over its partitions;
        waiting includes jobs queued behind their key's head), the lifetime counters, and
        ``paused``. ``lanes``: only these of its lanes (the page counts a wide queue in pieces)."""
        lanes = self.lanes(queue) if lanes is None else list(lanes)
        pipe = self.redis.pipeline(transaction=False)
        for k in lanes:
            for key in (k.waiting, k.delayed, k.active, k.dead, k.done):
                pipe.zcard(key)
            pipe.hgetall(k.stats)
            pipe.exists(k.paused)
        replies = pipe.execute()
        out: dict[str, Any] = dict.fromkeys(("waiting", "delayed", "active", "dead", "done"), 0)
        stats: dict[bytes, int] = {}
        paused = False
        for i in range(len(lanes)):
            *cards, lane_stats, lane_paused = replies[7 * i:7 * i + 7]
            for name, n in zip(("waiting", "delayed", "active", "dead", "done"), cards, strict=True):
                out[name] += n
            for name, v in lane_stats.items():
                stats[name] = stats.get(name, 0) + int(v)
            paused = paused or bool(lane_paused)
        out["waiting"] += max(stats.get(b"queued", 0), 0)
        out["paused"] = paused
        for name in ("enqueued", "retried"):
            out[f"{name}_total"] = int(stats.get(name.encode(), 0))
        out["done_total"] = int(stats.get(b"done", 0))
        out["dead_total"] = int(stats.get(b"dead", 0))
        out["throttled_total"] = int(stats.get(b"throttled", 0))  # reserves a rate limit made wait
        out["throttled_jobs_total"] = int(stats.get(b"throttled_jobs", 0))  # jobs put back by governor.limit()
        if len(lanes) > 1:
            out["partitions"] = len(lanes)
        return out
