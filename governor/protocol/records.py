"""What Redis holds and answers, read as untrusted: a reserved job, a fail's outcome, a lease,
a job's record as users read it, a partitioned queue's count; and waiting for replicas.

Any client can write these keys, so nothing read here is trusted: a record that does not
decode becomes a ``malformed`` one (a worker dead-letters its job), a count out of bounds is
refused, never looped over.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import redis

from governor.config import MAX_PARTITIONS
from governor.protocol.connection import is_cluster
from governor.protocol.keys import QueueKeys
from governor.untrusted import loads


class NotReplicated(RuntimeError):
    """The write is on the primary, but fewer replicas than ``redis.wait.replicas`` confirmed
    it in time: a failover now could lose it. ``ids``: the jobs concerned (an enqueue can be
    re-sent with the same ids: an existing id is not queued twice)."""

    def __init__(self, what: str, acked: int, wanted: int, timeout_ms: int, ids: Sequence[str] = ()) -> None:
        super().__init__(f"{what}, but only {acked} of {wanted} replica(s) confirmed it within "
                         f"{timeout_ms}ms: a failover now could lose it")
        self.acked, self.wanted, self.ids = acked, wanted, list(ids)


def wait_replicas(client: Any, keys: Iterable[str], replicas: int, timeout_ms: int) -> int:
    """WAIT on the primary (of each slot, on a Cluster) that took writes to ``keys``; returns
    the fewest replicas any of them confirmed."""
    if not is_cluster(client):
        return int(client.execute_command("WAIT", replicas, timeout_ms))
    nodes = {client.get_node_from_key(k).name: client.get_node_from_key(k) for k in keys}
    return min(int(client.execute_command("WAIT", replicas, timeout_ms, target_nodes=node))
               for node in nodes.values())


class FailOutcome(IntEnum):
    """Return codes of fail.lua (an int: equal to the number Redis answers)."""

    LOST = 0
    REQUEUED = 1
    RETRYING = 2
    DEAD = 3


class ReserveReply(IntEnum):
    """The first element of reserve.lua's reply: what the worker does next (an int: equal to
    the number Redis answers, so a reply is compared without being converted)."""

    EMPTY = 0  # nothing ready: reply[1] is when the next delayed job falls due (ms), or -1
    JOB = 1  # a job leased to us: reply[1:4] are its id, payload and record
    THROTTLED = 2  # a rate limit: a start is ours in reply[1] ms
    AT_LIMIT = 3  # at global_concurrency: a settle wakes us
    PAUSED = 4  # the queue is paused: a resume wakes us


@dataclass
class Reserved:
    """A job leased to this worker: settle it with its ``token`` or lose it to the fence."""

    id: str
    token: str
    payload: bytes
    meta: dict[str, Any]

    @classmethod
    def from_reply(cls, reply: list[Any], token: str) -> Reserved:
        """A record that cannot be decoded becomes ``{"malformed": why}``: the worker
        dead-letters the job with that reason instead of dying over it."""
        _, job_id, payload, raw_meta = reply
        try:
            meta = loads(raw_meta, "the job's record")
        except ValueError as exc:
            meta = {"malformed": str(exc)}
        if not isinstance(meta, dict):
            meta = {"malformed": "the job's record is not a JSON object"}
        return cls(id=job_id.decode(errors="surrogateescape"), token=token, payload=payload, meta=meta)

    @property
    def fencing_token(self) -> int:
        """Grows with every run of every job of the queue, fleet-wide (lua/lib/leases.lua ``next_fence``;
        on a Cluster, across a partitioned queue's partitions only as their shards' clocks go)."""
        fence = self.meta.get("fence")
        return fence if isinstance(fence, int) and 0 <= fence < 2 ** 63 else 0

    @property
    def attempts(self) -> int:
        attempts = self.meta.get("attempts")
        return attempts if isinstance(attempts, int) and 0 < attempts < 2 ** 31 else 1


def parse_lease(held: bytes) -> tuple[str, str]:
    """A lease entry is ``"<job id> <token>"``. Tokens never hold a space, so the entry is
    split at its last space whatever the id holds (as ``parse_lease`` in lua/lib/leases.lua does)."""
    job_id, _, token = held.decode(errors="surrogateescape").rpartition(" ")
    return job_id, token


def lease_of(client: redis.Redis, keys: QueueKeys, worker: str) -> tuple[str, str] | None:
    """The (job id, token) a worker holds in this queue, as Redis knows it."""
    held = client.hget(keys.leases, worker)
    return parse_lease(held) if held else None


def partition_of(key: str, partitions: int) -> int:
    """The partition of an ordering key: CRC-32 (IEEE, as zlib computes it) of its UTF-8 bytes,
    modulo the partition count; a producer in another language computes the same."""
    return zlib.crc32(key.encode("utf-8", "surrogateescape")) % partitions


_TIME_FIELDS = ("enqueued_at", "started_at", "finished_at", "due_at")


def _record(queue: str, job_id: str, meta: bytes, payload: bytes | None) -> dict[str, Any]:
    """A job's record as a user reads it: times in seconds, the result and arguments decoded;
    one that does not decode is shown as such (a worker dead-letters it)."""
    try:
        record = loads(meta, "the job's record")
        if not isinstance(record, dict):
            raise ValueError("the job's record is not a JSON object")
    except ValueError as exc:  # not written by governor; a worker will dead-letter it
        record = {"id": job_id, "queue": queue, "state": "unknown", "malformed": str(exc)}
    record.setdefault("id", job_id)
    if "result_json" in record:
        try:
            record["result"] = loads(record.pop("result_json"), "the result")
        except (ValueError, TypeError) as exc:
            record["result_error"] = str(exc)
    for name in _TIME_FIELDS:
        if not isinstance(record.get(name), (int, float)) or isinstance(record.get(name), bool):
            record.pop(name, None)
        else:
            record[name] = record[name] / 1000.0
    if not isinstance(record.get("errors"), list):
        record["errors"] = []
    record["errors"] = [e if isinstance(e, dict) else {"error": str(e)} for e in record["errors"]]
    try:
        body = loads(payload, "the payload") if payload else {}
    except ValueError:
        body = {}
    record["args"] = body.get("args", []) if isinstance(body, dict) else []
    record["kwargs"] = body.get("kwargs", {}) if isinstance(body, dict) else {}
    return record


def register_partitions(client: Any, keys: QueueKeys, partitions: int) -> int:
    """Writes a partitioned queue's count where producers and masters read it, unless a count
    is there already, and returns the one Redis holds (a master refuses to serve, a producer to
    enqueue, if it differs from theirs). A master does it when it starts the queue; so does a
    producer told the count (the CLI reads it from the config), so keyed jobs can be queued
    before any master runs. A pause given while no count was known is kept at the queue's home
    (``Client.pause`` writes it there first, then reads the count): it is copied into every
    partition here, after the count is written, so one of the two always sees the other."""
    home = keys.home()
    pipe = client.pipeline(transaction=False)
    pipe.set(home.partitions_key, partitions, nx=True)
    pipe.get(home.partitions_key)
    pipe.exists(home.paused)
    _, stored, paused = pipe.execute()
    stored = partition_count(keys.queue, stored)
    if paused and stored == partitions:
        pipe = client.pipeline(transaction=False)
        for n in range(partitions):
            pipe.set(home.part(n).paused, "1", nx=True)
        pipe.execute()
    return stored


def partition_count(queue: str, raw: bytes) -> int:
    """A partition-count key's value, checked: anything but 1-MAX_PARTITIONS (config's bound) is
    refused with ValueError, so no call loops over a count any client could have written."""
    text = raw[:20].decode("ascii", errors="replace")
    if not (raw.isdigit() and len(raw) <= 5 and 1 <= int(raw) <= MAX_PARTITIONS):
        raise ValueError(f"queue {queue!r}: its partition count in Redis is {text!r}"
                         f"{'...' if len(raw) > 20 else ''}, not from 1 to {MAX_PARTITIONS}; not read")
    return int(raw)
