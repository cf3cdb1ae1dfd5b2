"""``Client``: the producer's API (enqueue one job or many, validated before anything is sent),
with the reads of ``ClientBase`` and the operations of ``QueueOperations``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import redis

from governor.protocol.client_base import DEFAULT_MAX_PAYLOAD, _check_queue_name
from governor.protocol.client_ops import QueueOperations
from governor.protocol.connection import connect, is_cluster
from governor.protocol.records import NotReplicated, partition_of, wait_replicas
from governor.protocol.scripts import run
from governor.units import parse_duration

DEFAULT_PRIORITY = 50
MAX_PRIORITY = 100
_BULK_CHUNK = 1000
# The same bounds enqueue.lua enforces (it is the line for producers that bypass this client).
JOB_ID = re.compile(r"[\x21-\x7e]{1,200}")
JOB_ID_RULE = "1-200 printable ASCII characters without spaces (letters, digits, punctuation)"
MAX_DELAY = 3650 * 86400.0
MAX_TIMEOUT = 365 * 86400.0
MAX_RETRIES = 1_000_000


def _seconds(value: float | str | None, what: str, low: float, high: float) -> float | None:
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
    if not low <= seconds <= high:
        raise ValueError(f"{what} must be from {low:g}s to {high / 86400:g} days, got {value!r}")
    return seconds


class Client(QueueOperations):
    """Enqueue jobs and read their records. Safe to share within one process, not across fork.

    Its parts: the connection, lanes, registry and reads (``ClientBase``), pause and the
    operations on jobs (``QueueOperations``), and here the enqueue path."""

    @classmethod
    def from_url(cls, url: str, prefix: str = "governor", max_payload: int = DEFAULT_MAX_PAYLOAD,
                 wait: tuple[int, float] = (0, 0.0), partitions: Mapping[str, int] | None = None,
                 **redis_kwargs: Any) -> Client:
        """``redis_kwargs`` go to the connection, e.g. ``tls=TlsConfig(ca=...)`` or ``password=``."""
        return cls(connect(url, **redis_kwargs), prefix=prefix, max_payload=max_payload, wait=wait,
                   partitions=partitions)

    def enqueue(self, queue: str, handler: str, *args: Any, priority: int = DEFAULT_PRIORITY,
                delay: float | str | None = None, timeout: float | str | None = None,
                max_retries: int | None = None, job_id: str | None = None,
                unique: str | None = None, key: str | None = None, **kwargs: Any) -> str:
        """Queues one job and returns its id; an existing ``job_id`` is not queued twice.

        ``key`` (partitioned queues, where every job has one): jobs with the same key run one
        at a time, in enqueue order, fleet-wide.

        With ``unique``, while a job of this queue holding that key is waiting, delayed or
        active, nothing is queued and that job's id is returned: a producer that fires on
        every event still gets one job per key at a time (e.g. one index rebuild)."""
        return self.enqueue_many(queue, [{
            "handler": handler, "args": list(args), "kwargs": kwargs, "priority": priority,
            "delay": delay, "timeout": timeout, "max_retries": max_retries, "job_id": job_id,
            "unique": unique, "key": key,
        }])[0]

    def enqueue_many(self, queue: str, jobs: Iterable[dict[str, Any]]) -> list[str]:
        """Queues many jobs in one round trip, all or none. Each dict has ``handler`` and
        optionally ``args``, ``kwargs``, ``priority``, ``delay``, ``timeout``, ``max_retries``,
        ``job_id``, ``unique``, ``key``. Returns, per job, the id of the job that holds it: its own, or,
        when its ``unique`` key is held (by a live job, or by an earlier job of this batch),
        the holder's, and that job is not queued.

        Every job is validated before anything is sent, so a bad one raises ValueError naming
        it and writes nothing. Over 1,000 jobs go as several script calls in one MULTI/EXEC.
        If the connection drops during the call, whether it ran is unknown: re-sending the
        same jobs with their own ``job_id`` is safe (an existing id is not queued twice)."""
        _check_queue_name(queue)
        keys = self.keys(queue)
        prepared = []
        for i, spec in enumerate(jobs):
            try:
                prepared.append(self._prepare(queue, spec))
            except ValueError as exc:
                raise ValueError(f"job {i}: {exc}" if i else str(exc)) from None
        if not prepared:
            return []
        ids = [p[0] for p in prepared]
        self._register(queue)
        self._register_partitions(queue)
        if any(p[4] is not None for p in prepared):
            replies = self._enqueue_keyed(queue, prepared)
        else:
            calls = [keys.enqueue([p[:4] for p in prepared[i:i + _BULK_CHUNK]])
                     for i in range(0, len(prepared), _BULK_CHUNK)]
            try:
                replies = [r for chunk in run(self.redis, *calls, atomic=True) for r in chunk]
            except redis.ResponseError as exc:
                if "the queue is partitioned" not in str(exc):
                    raise
                raise ValueError(f"queue {queue!r} is partitioned: every job needs a key "
                                 "(enqueue(..., key=...), or --key)") from None
        # 1 created, 0 the id existed, or (bytes) the id of the job that holds the unique key
        out = [r.decode(errors="surrogateescape") if isinstance(r, bytes) else job_id
               for job_id, r in zip(ids, replies, strict=True)]
        replicas, timeout = self.wait
        if replicas:
            timeout_ms = max(1, int(timeout * 1000))
            lanes = {self.keys(queue).part(partition_of(p[4], self.partitions(queue) or 1)).meta
                     if p[4] is not None else keys.meta for p in prepared}
            acked = wait_replicas(self.redis, lanes, replicas, timeout_ms)
            if acked < replicas:
                raise NotReplicated(f"{len(out)} job(s) queued on the primary", acked, replicas,
                                    timeout_ms, out)
        return out

    def _enqueue_keyed(self, queue: str, prepared: list[tuple[str, str, str, int, str | None]]) -> list[Any]:
        """Each job to its key's partition, then a hint to each partition's holder. Atomic as a
        whole on one Redis; on a Cluster, per partition (re-sending with the same ids is safe)."""
        n = self.partitions(queue)
        if n is None:
            raise ValueError(f"queue {queue!r} is not partitioned: a job's key orders it only on a "
                             "queue with partitions: N in its config (and a master has started it)")
        groups: dict[int, list[int]] = {}
        for i, p in enumerate(prepared):
            if p[4] is None:
                raise ValueError(f"job {i}: queue {queue!r} is partitioned: every job needs a key")
            groups.setdefault(partition_of(p[4], n), []).append(i)
        keys = self.keys(queue)
        calls, order = [], []
        for part, idx in groups.items():
            for c in range(0, len(idx), _BULK_CHUNK):
                chunk = idx[c:c + _BULK_CHUNK]
                calls.append(keys.part(part).enqueue([prepared[i][:4] for i in chunk]))
                order.append(chunk)
        # a job queued behind its key's head is no job for an idle worker: one hint per key at most
        hint = keys.hint({part: len({prepared[i][4] for i in idx}) for part, idx in groups.items()})
        if len(calls) == 1:
            results = run(self.redis, calls[0], hint)[:1]
        else:
            results = run(self.redis, *calls, atomic=not is_cluster(self.redis))
            run(self.redis, hint)
        replies: list[Any] = [None] * len(prepared)
        for chunk, result in zip(order, results, strict=True):
            for i, r in zip(chunk, result, strict=True):
                replies[i] = r
        return replies

    def _prepare(self, queue: str, spec: dict[str, Any]) -> tuple[str, str, str, int, str | None]:
        unknown = set(spec) - {"handler", "args", "kwargs", "priority", "delay", "timeout",
                               "max_retries", "job_id", "unique", "key"}
        if unknown:
            raise ValueError(f"unknown job field(s): {', '.join(sorted(unknown))}")
        handler = spec.get("handler")
        if not isinstance(handler, str) or ":" not in handler:
            raise ValueError(f"handler must be 'module:function', got {handler!r}")
        args, kwargs = spec.get("args") or [], spec.get("kwargs") or {}
        if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
            raise ValueError("args must be a list and kwargs a mapping")
        priority = spec.get("priority", DEFAULT_PRIORITY)
        if priority is None:
            priority = DEFAULT_PRIORITY
        if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= MAX_PRIORITY:
            raise ValueError(f"priority must be an integer 0-{MAX_PRIORITY} (lower runs first), got {priority!r}")
        max_retries = spec.get("max_retries")
        if max_retries is not None and (isinstance(max_retries, bool) or not isinstance(max_retries, int)
                                        or not 0 <= max_retries <= MAX_RETRIES):
            raise ValueError(f"max_retries must be an integer from 0 to {MAX_RETRIES}, got {max_retries!r}")
        delay = _seconds(spec.get("delay"), "delay", 0.0, MAX_DELAY) or 0.0
        timeout = _seconds(spec.get("timeout"), "timeout", 0.001, MAX_TIMEOUT)
        job_id = spec.get("job_id") or uuid.uuid4().hex
        if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
            raise ValueError(f"job_id must be {JOB_ID_RULE}, got {job_id!r}")
        unique = spec.get("unique")
        if unique is not None and (not isinstance(unique, str) or not JOB_ID.fullmatch(unique)):
            raise ValueError(f"unique must be {JOB_ID_RULE}, got {unique!r}")
        key = spec.get("key")
        if key is not None and (not isinstance(key, str) or not JOB_ID.fullmatch(key)):
            raise ValueError(f"key must be {JOB_ID_RULE}, got {key!r}")
        try:
            payload = json.dumps({"handler": handler, "args": list(args), "kwargs": kwargs},
                                 separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"job arguments must be JSON-serialisable: {exc}") from None
        if len(payload) > self.max_payload:
            raise ValueError(f"job payload is {len(payload)} bytes, over the limit of {self.max_payload}")
        meta: dict[str, Any] = {"id": job_id, "queue": queue, "handler": handler, "priority": priority}
        if max_retries is not None:
            meta["max_retries"] = max_retries
        if timeout is not None:
            meta["timeout"] = timeout
        if unique is not None:
            meta["unique"] = unique
        if key is not None:
            meta["key"] = key
        return job_id, payload, json.dumps(meta, separators=(",", ":")), int(delay * 1000), key
