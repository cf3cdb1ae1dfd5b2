"""The Redis protocol: one queue's keys, the Lua scripts that move jobs, and ``Client``.

Every state change of a job is one script (see ``governor/lua``), so a crash
between two commands can never lose or duplicate a job. Scripts are sent as
EVALSHA; a worker settles one job and reserves the next in one script call
(``settle_and_reserve``), so a job costs a single round trip in steady state.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, NamedTuple

import redis

from governor.config import MAX_PARTITIONS
from governor.names import queue_name_problem
from governor.protocol.connection import connect, is_cluster
from governor.protocol.limits import Rules
from governor.protocol.retried import Retried, held_text, holder
from governor.units import parse_duration
from governor.untrusted import loads

DEFAULT_PRIORITY = 50
MAX_PRIORITY = 100
DEFAULT_MAX_PAYLOAD = 1024 * 1024
_BULK_CHUNK = 1000
NO_RULES = Rules()
# The same bounds enqueue.lua enforces (it is the line for producers that bypass this client).
JOB_ID = re.compile(r"[\x21-\x7e]{1,200}")
JOB_ID_RULE = "1-200 printable ASCII characters without spaces (letters, digits, punctuation)"
MAX_DELAY = 3650 * 86400.0
MAX_TIMEOUT = 365 * 86400.0
MAX_RETRIES = 1_000_000


# Each of these files defines one transition as a function of its KEYS and ARGV, so that one
# text serves both its own script and settle_reserve, which runs a settle and a reserve in turn.
_TRANSITIONS = ("ack", "fail", "reserve")


def _load_scripts() -> dict[str, tuple[str, str]]:
    """name -> (source, SHA1): lib.lua, the shared prelude, then the script's own text."""
    pkg = resources.files("governor.protocol") / "lua"
    prelude = (pkg / "lib.lua").read_text()

    def text(name: str) -> str:
        return (pkg / f"{name}.lua").read_text()

    bodies = {name: text(name) for name in ("enqueue", "tick", "renew", "limit", "partitions", "hint", "handlers",
                                                "censor", "fleet", "jobs", "retry", "registry",
                                                "cancel", "purge")}
    for name in _TRANSITIONS:
        bodies[name] = f"{text(name)}\nreturn {name}(KEYS, ARGV)\n"
    bodies["settle_reserve"] = "\n".join(text(name) for name in (*_TRANSITIONS, "settle_reserve"))
    scripts = {}
    for name, body in bodies.items():
        src = prelude + "\n" + body
        scripts[name] = (src, hashlib.sha1(src.encode()).hexdigest())
    return scripts


_SCRIPTS = _load_scripts()


JOB_STATES = ("waiting", "delayed", "active", "dead", "done")
RESERVE_LANE_KEYS = 11  # reserve.lua's keys of its own lane, before the limits' and the queue fence
ACK_WAKE = 7  # in an ack's arguments: whether it wakes a waiting worker (ack.lua's ARGV[8])


class Call(NamedTuple):
    """One script invocation, ready to run alone or in a pipeline."""

    script: str
    keys: Sequence[str]
    args: Sequence[Any]


def run(client: redis.Redis, *calls: Call, atomic: bool = False) -> list[Any]:
    """Runs the calls in one round trip; reloads the scripts once if Redis forgot them.

    A NOSCRIPT error means that command did not run, so re-running just the
    failed ones is safe (a restarted Redis starts with an empty script cache).
    ``atomic`` runs several calls as one MULTI/EXEC that loads its scripts first,
    so no NOSCRIPT can split it: Redis runs all of them or, if it refuses the
    transaction (OOM, READONLY), none.
    """
    if atomic and len(calls) > 1:
        return _execute_atomic(client, calls)
    results = _execute(client, calls)
    missing = [i for i, r in enumerate(results) if isinstance(r, redis.exceptions.NoScriptError)]
    if missing:
        for src, _sha in _SCRIPTS.values():
            client.script_load(src)
        retried = _execute(client, [calls[i] for i in missing])
        for i, r in zip(missing, retried, strict=True):
            results[i] = r
    for r in results:
        if isinstance(r, Exception):
            raise r
    return results


def _execute_atomic(client: redis.Redis, calls: Sequence[Call]) -> list[Any]:
    pipe = client.pipeline(transaction=True)
    if is_cluster(client):
        # a Cluster transaction holds commands of one slot only (SCRIPT LOAD has none): the
        # scripts go whole, so no NOSCRIPT can split the transaction either
        for c in calls:
            pipe.execute_command("EVAL", _SCRIPTS[c.script][0], len(c.keys), *c.keys, *c.args)
        return pipe.execute(raise_on_error=True)
    for name in dict.fromkeys(c.script for c in calls):
        pipe.script_load(_SCRIPTS[name][0])
    for c in calls:
        pipe.execute_command("EVALSHA", _SCRIPTS[c.script][1], len(c.keys), *c.keys, *c.args)
    results = pipe.execute(raise_on_error=True)
    return results[len(results) - len(calls):]


def _execute(client: redis.Redis, calls: Sequence[Call]) -> list[Any]:
    if len(calls) == 1:
        c = calls[0]
        try:
            return [client.evalsha(_SCRIPTS[c.script][1], len(c.keys), *c.keys, *c.args)]
        except redis.exceptions.NoScriptError as exc:
            return [exc]
    pipe = client.pipeline(transaction=False)
    cluster = is_cluster(client)
    for c in calls:
        # execute_command: a Cluster pipeline refuses .evalsha; and there it is sent to the
        # node of its first key, named here: else redis-py asks a node (COMMAND GETKEYS) for
        # every script of every pipeline, one round trip each, before sending it
        route = {"target_nodes": client.get_node_from_key(c.keys[0])} if cluster else {}
        pipe.execute_command("EVALSHA", _SCRIPTS[c.script][1], len(c.keys), *c.keys, *c.args, **route)
    return pipe.execute(raise_on_error=False)


def hash_tag(key: str) -> str:
    """The part of a key Redis Cluster hashes to pick its slot: the first ``{...}`` holding at
    least one character, else the whole key."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1:end]
    return key


def settle_and_reserve(settle: Call, reserve: Call) -> Call:
    """One script call that runs ``settle`` (an ack or a fail) and then ``reserve``: a worker's
    steady state in one round trip and one script run, instead of two scripts in a pipeline.

    Both are built as for running alone (``QueueKeys.ack``/``fail`` and ``reserve``), and must
    be of one lane: the settle's keys and the reserve's queue keys under one hash tag (one
    queue, or one partition of a partitioned queue), which on a Cluster is one slot. The
    reserve's rate-limit keys go as the reserve alone has them. Raises ValueError otherwise
    (a job of one partition settled as the worker reserves from another: send the two calls).

    The reply is ``[settle_reply, reserve_reply]``, each exactly what ack.lua or fail.lua, and
    reserve.lua, return alone. The settle's fencing is unchanged: a stale token makes it 0
    (lost) and the reserve runs all the same. Re-sending the call after a lost reply (same
    tokens) is safe: a settled run answers as it did, and the reserve hands back the job it
    leased to this worker under that token, so nothing is lost or done twice.

    Layout: KEYS are the settle's keys then the reserve's; ARGV is the settle's script name,
    its key count, its argument count, then the settle's arguments and the reserve's."""
    if settle.script not in ("ack", "fail") or reserve.script != "reserve":
        raise ValueError(f"settle_and_reserve takes an ack or a fail, then a reserve; got "
                         f"{settle.script!r} and {reserve.script!r}")
    lane = reserve.keys[:RESERVE_LANE_KEYS]  # then the limits' keys and a partition's queue fence
    tags = {hash_tag(k) for k in (*settle.keys, *lane)}
    if len(tags) != 1:
        raise ValueError(f"a settle and a reserve run as one script only within one hash tag; "
                         f"these keys span {', '.join(sorted(tags))}")
    return Call("settle_reserve", (*settle.keys, *reserve.keys),
                (settle.script, len(settle.keys), len(settle.args), *settle.args, *reserve.args))


@dataclass(frozen=True)
class QueueKeys:
    """Every key of one queue, all under the hash tag ``{prefix:queue}`` (one Cluster slot);
    or of one partition of a partitioned queue, under ``{prefix:queue:N}`` (a slot of its own,
    so a partitioned queue spreads over a Cluster's shards)."""

    prefix: str
    queue: str
    partition: int | None = None

    def key(self, part: str) -> str:
        if self.partition is None:
            return f"{{{self.prefix}:{self.queue}}}:{part}"
        return f"{{{self.prefix}:{self.queue}:{self.partition}}}:{part}"

    def home(self) -> QueueKeys:
        """The queue's own slot: its partition leases, hint lists and the partitions marker."""
        return QueueKeys(self.prefix, self.queue)

    def part(self, n: int) -> QueueKeys:
        return QueueKeys(self.prefix, self.queue, n)

    @property
    def partitions_key(self) -> str:
        """Holds the queue's partition count while it is partitioned (set by its masters)."""
        return self.home().key("partitions")

    @property
    def heads(self) -> str:
        """Hash: ordering key -> the one job of that key that may be waiting, delayed or active."""
        return self.key("heads")

    @property
    def key_lists(self) -> str:
        """Prefix of each ordering key's list of queued jobs (enqueue order)."""
        return self.key("key:")

    @property
    def queued(self) -> str:
        """Sorted set (enqueue sequence -> id) of the jobs queued behind their key's head: an
        index of the keys' lists, for the job commands to list and purge what ``status`` counts
        as waiting. It is the lists' prefix itself, which names no list (a key is never empty)."""
        return self.key_lists

    @property
    def waiting(self) -> str:
        return self.key("waiting")

    @property
    def delayed(self) -> str:
        return self.key("delayed")

    @property
    def active(self) -> str:
        return self.key("active")

    @property
    def dead(self) -> str:
        return self.key("dead")

    @property
    def done(self) -> str:
        return self.key("done")

    @property
    def meta(self) -> str:
        return self.key("meta")

    @property
    def data(self) -> str:
        return self.key("data")

    @property
    def leases(self) -> str:
        return self.key("leases")

    @property
    def wake(self) -> str:
        return self.key("wake")

    @property
    def stats(self) -> str:
        return self.key("stats")

    @property
    def unique(self) -> str:
        """Hash: unique key -> the id of the job holding it while waiting, delayed or active."""
        return self.key("unique")

    @property
    def tickets(self) -> str:
        """Hash: worker -> the time of the start a rate limit set aside for it (reserve.lua)."""
        return self.key("tickets")

    @property
    def paused(self) -> str:
        """``"1"`` while the queue is paused: the reserve starts no job of it, on any host."""
        return self.key("paused")

    # -- script calls ---------------------------------------------------------

    def enqueue(self, jobs: Sequence[tuple[str, str, str, int]]) -> Call:
        args: list[Any] = [len(jobs)]
        for job in jobs:
            args.extend(job)
        return Call("enqueue", (self.meta, self.data, self.waiting, self.delayed,
                                self.key("seq"), self.wake, self.stats, self.unique, self.heads,
                                self.key_lists, self.key("partitions")), args)

    def reserve(self, worker: str, token: str, lease_ms: int, rules: Rules = NO_RULES,
                partitions: int = 0, cluster: bool = False) -> Call:
        """``rules``: the queue's fleet-wide concurrency and rate limits (limits.py).

        A partition's fencing token (lib.lua ``next_fence``): on one Redis, the queue's own
        counter, passed beside the partition's keys (another slot, which only a Cluster
        refuses), so tokens grow in reservation order across the queue; on a Cluster
        (``cluster``), from the partition's counter and Redis time, which needs the queue's
        ``partitions`` count."""
        keys: tuple[str, ...] = (self.waiting, self.delayed, self.active, self.meta, self.data,
                                 self.leases, self.wake, self.key("fence"), self.key("paused"),
                                 self.tickets, self.stats, *rules.keys())
        if self.partition is None:
            fence: tuple[int, int] = (-1, 0)
        else:
            if cluster and not 1 <= partitions <= 1024:
                raise ValueError(f"a partition's reserve on a Cluster needs the partition count, got {partitions}")
            fence = (self.partition, partitions)
            if not cluster:
                keys = (*keys, self.home().key("fence"))
        return Call("reserve", keys, (worker, token, lease_ms, *rules.argv(), *fence))

    def ack(self, job_id: str, token: str, worker: str, done_ttl_ms: int, result: str,
            run_ms: int, result_note: str = "", wake: bool = False, runtimes: tuple[str, int] | None = None) -> Call:
        """``result_note`` says why a result is not kept (too large, not JSON); ``wake``: the
        queue has a global_concurrency, so the freed slot wakes one waiting worker; ``runtimes``:
        (handler, how many run times to keep): the run is counted as the handler's, and its
        time kept among the handler's last ones (its percentiles, its adaptive limit)."""
        keys = (self.active, self.meta, self.data, self.done, self.leases, self.stats, self.unique,
                self.waiting, self.wake, self.delayed, self.heads, self.key_lists)
        args = (job_id, token, worker, done_ttl_ms, result, run_ms, result_note, "1" if wake else "")
        if runtimes:
            keys = (*keys, self.runtimes(runtimes[0]), self.handler_counts)
            args = (*args, runtimes[1], runtimes[0])
        return Call("ack", keys, args)

    # -- operations on jobs (an operator's, from the CLI, the Client or the web page) -------

    def state_key(self, state: str) -> str:
        if state not in JOB_STATES:
            raise ValueError(f"state must be one of {', '.join(JOB_STATES)}, got {state!r}")
        return {"waiting": self.waiting, "delayed": self.delayed, "active": self.active, "dead": self.dead,
                "done": self.done}[state]

    def list_jobs(self, state: str, offset: int, want: int, budget: int, handler: str = "",
                  text: str = "", what: str = "full") -> Call:
        """``what``: 'full' (records and payloads), 'record' (no payload) or 'ids'. Waiting
        includes the jobs queued behind their key's head (listed first)."""
        keys = (self.state_key(state), self.meta, self.data)
        return Call("jobs", (*keys, self.queued) if state == "waiting" else keys,
                    (offset, want, budget, handler, text, what))

    def retry(self, ids: Sequence[str], mode: str = "strict") -> Call:
        """``mode``: 'strict' (all or nothing), 'any' (those that can be), 'check' (only say)."""
        return Call("retry", (self.dead, self.meta, self.waiting, self.delayed, self.wake, self.stats,
                              self.heads, self.key_lists, self.unique), (mode, *ids))

    def cancel(self, ids: Sequence[str]) -> Call:
        return Call("cancel", (self.waiting, self.delayed, self.meta, self.done, self.unique, self.stats,
                               self.heads, self.key_lists), tuple(ids))

    def purge(self, state: str, limit: int, ids: Sequence[str] = ()) -> Call:
        return Call("purge", (self.state_key(state), self.meta, self.data, self.unique, self.stats, self.heads,
                              self.key_lists, self.waiting, self.delayed), (state, limit, *ids))

    # -- adaptive timeouts: per handler, in each lane ------------------------------------

    @property
    def adaptive(self) -> str:
        """handler -> its learnt hard limit in ms (absent: the configured limit applies)."""
        return self.key("adaptive")

    @property
    def handler_counts(self) -> str:
        """'<handler>|<outcome>' -> runs, in this lane: done, failed, dead and each failure's
        reason (ack.lua and fail.lua count; handlers.lua and status read)."""
        return self.key("handler_counts")

    def runtimes(self, handler: str) -> str:
        return self.key(f"runtimes:{handler}")

    def adaptive_kills(self, handler: str) -> str:
        return self.key(f"adaptive_kills:{handler}")

    def censor(self, handler: str, limit_ms: int, keep: int, job_id: str) -> Call:
        return Call("censor", (self.runtimes(handler), self.handler_counts, self.adaptive_kills(handler)),
                    (limit_ms, keep, handler, job_id))

    def learn(self, handlers: Sequence[str], percentile: float, factor: float, min_ms: int, max_ms: int,
              samples: int, max_kills: int, window_ms: int) -> Call:
        keys = [self.adaptive]
        for h in handlers:
            keys += [self.runtimes(h), self.adaptive_kills(h)]
        return Call("handlers", tuple(keys), (percentile, factor, min_ms, max_ms, samples, max_kills,
                                              window_ms, *handlers))

    def fail(self, job_id: str, token: str, worker: str, error: dict | None, mode: str,
             backoff_ms: int, reason: str, default_max_retries: int) -> Call:
        """mode: ``retry`` (if attempts remain), ``dead`` (now) or ``requeue`` (attempt not counted)."""
        return Call("fail", (self.active, self.meta, self.waiting, self.delayed, self.dead,
                             self.leases, self.wake, self.stats, self.unique, self.heads,
                             self.key_lists, self.handler_counts),
                    (job_id, token, worker, json.dumps(error) if error else "", mode, backoff_ms,
                     reason, default_max_retries))

    def tick(self, done_ttl_ms: int) -> Call:
        return Call("tick", (self.waiting, self.delayed, self.active, self.meta, self.data,
                             self.done, self.wake, self.dead, self.stats, self.paused, self.tickets),
                    (done_ttl_ms,))

    def renew(self, lease_ms: int, workers: Sequence[str]) -> Call:
        return Call("renew", (self.active, self.leases), (lease_ms, *workers))

    # -- a partitioned queue's home slot -------------------------------------------------

    def hint_list(self, master: str) -> str:
        """The list a master's idle workers block on for this queue's partitions."""
        return self.home().key(f"hint:{master}")

    def partition_leases(self, master: str, lease_ms: int, partitions: int, per_host: int,
                         release: bool = False) -> Call:
        h = self.home()
        return Call("partitions", (h.key("holders"), h.key("masters"), h.key("hint:"), h.key("touched:")),
                    (master, lease_ms, partitions, per_host, "release" if release else "hold"))

    def hint(self, counts: Mapping[int, int]) -> Call:
        h = self.home()
        args: list[Any] = []
        for p, n in counts.items():
            args += [p, n]
        return Call("hint", (h.key("holders"), h.key("hint:"), h.key("touched:")), args)


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


class FailOutcome:
    """Return codes of fail.lua."""

    LOST = 0
    REQUEUED = 1
    RETRYING = 2
    DEAD = 3


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
        """Grows with every run of every job of the queue, fleet-wide (lib.lua ``next_fence``;
        on a Cluster, across a partitioned queue's partitions only as their shards' clocks go)."""
        fence = self.meta.get("fence")
        return fence if isinstance(fence, int) and 0 <= fence < 2 ** 63 else 0

    @property
    def attempts(self) -> int:
        attempts = self.meta.get("attempts")
        return attempts if isinstance(attempts, int) and 0 < attempts < 2 ** 31 else 1


def parse_lease(held: bytes) -> tuple[str, str]:
    """A lease entry is ``"<job id> <token>"``. Tokens never hold a space, so the entry is
    split at its last space whatever the id holds (as ``parse_lease`` in lib.lua does)."""
    job_id, _, token = held.decode(errors="surrogateescape").rpartition(" ")
    return job_id, token


def lease_of(client: redis.Redis, keys: QueueKeys, worker: str) -> tuple[str, str] | None:
    """The (job id, token) a worker holds in this queue, as Redis knows it."""
    held = client.hget(keys.leases, worker)
    return parse_lease(held) if held else None


def _cursor(cursor: str | None, lanes: int) -> tuple[int, int]:
    """A page cursor of ``Client.jobs``: 'lane.offset'."""
    if not cursor:
        return 0, 0
    lane, _, offset = cursor.partition(".")
    if not (lane.isdigit() and offset.isdigit()) or int(lane) >= lanes:
        raise ValueError(f"not a cursor from a previous page: {cursor!r}")
    return int(lane), int(offset)


def partition_of(key: str, partitions: int) -> int:
    """The partition of an ordering key: CRC-32 (IEEE, as zlib computes it) of its UTF-8 bytes,
    modulo the partition count; a producer in another language computes the same."""
    return zlib.crc32(key.encode("utf-8", "surrogateescape")) % partitions


def _check_queue_name(queue: object) -> None:
    """The rule ``check`` applies to the config's queues (names.py): a name it refuses could
    reach another queue's keys (``q:1`` are partition 1's of ``q``)."""
    problem = queue_name_problem(queue)
    if problem:
        raise ValueError(f"bad queue name {queue!r}: {problem}")


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


_TIME_FIELDS = ("enqueued_at", "started_at", "finished_at", "due_at")
OPS_BATCH = 500  # jobs per script call of an operation over many (retry --all, purge): bounded work
SEARCH_BATCH = 100  # ... and jobs looked at per call of a text search (it reads their payloads)


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


MAX_QUEUES_READ = 1000  # registry entries one read looks at (any client can add names)
MAX_NAME_BYTES = 256  # a longer registered name is no queue's (the config's rule allows 64)
MAX_REGISTRY_BYTES = 1 << 20  # a registry bigger than this (MEMORY USAGE) is not read


def partition_count(queue: str, raw: bytes) -> int:
    """A partition-count key's value, checked: anything but 1-MAX_PARTITIONS (config's bound) is
    refused with ValueError, so no call loops over a count any client could have written."""
    text = raw[:20].decode("ascii", errors="replace")
    if not (raw.isdigit() and len(raw) <= 5 and 1 <= int(raw) <= MAX_PARTITIONS):
        raise ValueError(f"queue {queue!r}: its partition count in Redis is {text!r}"
                         f"{'...' if len(raw) > 20 else ''}, not from 1 to {MAX_PARTITIONS}; not read")
    return int(raw)


class Client:
    """Enqueue jobs and read their records. Safe to share within one process, not across fork."""

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

    @classmethod
    def from_url(cls, url: str, prefix: str = "governor", max_payload: int = DEFAULT_MAX_PAYLOAD,
                 wait: tuple[int, float] = (0, 0.0), partitions: Mapping[str, int] | None = None,
                 **redis_kwargs: Any) -> Client:
        """``redis_kwargs`` go to the connection, e.g. ``tls=TlsConfig(ca=...)`` or ``password=``."""
        return cls(connect(url, **redis_kwargs), prefix=prefix, max_payload=max_payload, wait=wait,
                   partitions=partitions)

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
