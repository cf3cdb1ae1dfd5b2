"""The status read model: the shapes a master's status travels in, and ``governor status``'s gathering.

A master's status is read in four places: its control socket (``Master.status``), its fleet
record in Redis (the same, plus version and start time; ``protocol.fleetshape`` checks what
readers index, since any client can write the registry), ``governor status`` (which gathers
the socket, the registry and every queue's counts into one document) and the web page (whose
view ``ops.webview`` gathers in bounded steps inside the master's loop). The TypedDicts below
name those shapes once; the shaping functions are the ones the CLI and the page share.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypedDict

import redis

from governor.config import Config
from governor.protocol.connection import RedisUnavailable, resolve_url
from governor.protocol.fleet import fleet
from governor.protocol.limits import rules_for, usage
from governor.protocol.queue import Client

# -- what a master sends over its control socket and writes to the fleet registry --------


class JobSnapshot(TypedDict, total=False):
    """A worker's current job (``process.Worker.snapshot``)."""

    id: str
    handler: str | None
    attempt: int | None
    seconds: float | None  # how long it has run
    partition: int  # only on a partitioned queue
    waiting_alone: bool  # a suspect held until the worker's other jobs end (jobs_per_worker > 1)


class WorkerSnapshot(TypedDict, total=False):
    """One worker (``process.Worker.snapshot``); a fleet record's need only pid and state."""

    pid: int
    index: int
    state: str  # process.State's value: starting, idle, busy, draining, ...
    uptime: float
    jobs_done: int
    rss: int | None
    peak_rss: int | None
    job: JobSnapshot | None  # (jobs_per_worker > 1: the oldest of ``jobs``)
    stop_reason: str | None
    generation: int
    slots: int  # jobs_per_worker > 1 only: how many jobs it runs at once ...
    jobs: list[JobSnapshot]  # ... and the ones it holds now
    loop_blocked: dict[str, Any]  # its event loop not turning: seconds, and the job (id, handler) holding it


class Backoff(TypedDict):
    seconds: float
    respawn_in: float
    last_error: str | None


# one autoscaler step (``autoscale.Decision.as_dict``): "from" and "to" are the pool's size
# before and after, names the class syntax cannot declare
ScaleDecision = TypedDict("ScaleDecision", {"at": float, "direction": str, "from": int, "to": int,
                                            "reason": str, "signals": dict[str, Any]})


class AutoscaleSnapshot(TypedDict, total=False):
    min: int
    max: int
    desired: int
    actual: int
    held: str | None  # what holds the next step (a guard), if anything
    history: list[ScaleDecision]


class PoolSnapshot(TypedDict, total=False):
    """One queue's pool on one master (``pool.Pool.snapshot`` and the master's autoscale part)."""

    queue: str
    desired: int
    actual: int
    workers: list[WorkerSnapshot]
    backoff: Backoff | None
    generation: int
    spawn_error: str | None
    exits: dict[str, int]
    autoscale: AutoscaleSnapshot | None


class MasterSnapshot(TypedDict, total=False):
    """The master itself; ``version`` and ``started`` only in its fleet record."""

    pid: int
    host: str
    uptime: float
    config: str
    stopping: str | None
    redis: str  # its URL, password masked
    redis_ok: bool
    version: str
    started: float  # wall clock


class PartitionLeases(TypedDict, total=False):
    """One partitioned queue as this master sees it (``partitions.Partitions.snapshot``)."""

    partitions: int
    per_host: int
    held: list[int]
    watched: list[int]
    masters: int
    holders: dict[str, list[int]]  # master id -> the partitions it holds
    unheld: list[int]
    error: str | None  # why this master serves none


class HandlerFigures(TypedDict, total=False):
    """One handler of one queue (``handlerstats.HandlerFigures.as_dict``)."""

    done: int
    failed: int
    dead: int
    reasons: dict[str, int]
    samples: int
    p50: float
    p95: float
    p99: float
    limit: float | None
    configured: float | None
    adaptive: bool
    kills: int
    fallback: bool


class MasterStatus(TypedDict, total=False):
    """``Master.status()``: the control socket's ``status`` answer, and a fleet record's body."""

    master: MasterSnapshot
    pools: list[PoolSnapshot]
    partitions: dict[str, PartitionLeases]
    handlers: dict[str, dict[str, HandlerFigures]]  # queue -> handler -> figures


class FleetRecord(MasterStatus, total=False):
    """A master's record as ``protocol.fleet.fleet`` reads it: a ``MasterStatus`` whose shape
    ``fleetshape`` checked, or, when it did not pass, only ``error``."""

    id: str  # its name in the registry: host:boot:pidns:pid:start
    expires_in: float  # seconds until it drops out without another heartbeat
    error: str


# -- what `governor status` gathers ------------------------------------------------------


class DeadJob(TypedDict):
    """A dead job as status and the page list it: its last error only."""

    id: str
    handler: str | None
    reason: str | None
    attempts: int | None
    error: str | None


class PartitionView(TypedDict):
    count: int
    holders: dict[str, list[int]]  # a master's name -> the partitions it holds
    unheld: list[int]


class QueueCounts(TypedDict, total=False):
    """One queue's ``Client.counts`` (summed over its partitions); only ``error`` instead when
    its registry entries are unreadable."""

    waiting: int
    delayed: int
    active: int
    dead: int
    done: int
    paused: bool
    enqueued_total: int
    retried_total: int
    done_total: int
    dead_total: int
    throttled_total: int
    throttled_jobs_total: int
    error: str


class QueueStatus(QueueCounts, total=False):
    """One queue in ``governor status``: its counts and what status adds."""

    recent_dead: list[DeadJob]
    partitions: PartitionView
    limits: list[dict[str, Any]]  # protocol.limits.usage: what each rate limit has left
    global_concurrency: int | None


class StatusDocument(TypedDict, total=False):
    """``governor status --json``: what the terminal view renders."""

    config: str
    master: MasterSnapshot | None  # this host's master (or --host's), None if none runs
    pools: list[PoolSnapshot]
    partitions: dict[str, PartitionLeases]
    handlers: dict[str, dict[str, HandlerFigures]]
    queues: dict[str, QueueStatus]
    fleet: list[FleetRecord]
    unreadable_queues: list[str]  # registry entries that are no queue name
    unread_queues: int  # registry entries beyond what is read
    redis_error: str
    host: str  # --host


# -- shaping shared by status and the page -------------------------------------------------


def master_name(wid: str) -> str:
    """``host:boot:pidns:pid:start`` as an operator reads it: ``host:pid``."""
    parts = wid.split(":")
    return f"{':'.join(parts[:-4])}:{parts[-2]}" if len(parts) >= 5 else wid


def dead_job(record: dict[str, Any]) -> DeadJob:
    """A dead job's record (``protocol.queue._record``: ``errors`` always a list of objects)
    as status and the page list it."""
    return {"id": record["id"], "handler": record.get("handler"), "reason": record.get("reason"),
            "attempts": record.get("attempts"),
            "error": (record["errors"][-1].get("error") if record["errors"] else None)}


def partition_view(count: int, held: dict[int, str],
                   name: Callable[[str], str] = master_name) -> PartitionView:
    """A partitioned queue's leases: who holds which (``name``: how a holder is keyed), and
    which no master holds."""
    by_master: dict[str, list[int]] = {}
    for part, master in sorted(held.items()):
        by_master.setdefault(name(master), []).append(part)
    return {"count": count, "holders": by_master, "unheld": [i for i in range(count) if i not in held]}


# -- gathering ---------------------------------------------------------------------------


def client_for(cfg: Config) -> Client:
    """The config's Redis client, as producers and operators use it; RedisUnavailable when
    the config's embedded Redis is not running."""
    url = resolve_url(cfg.redis.url, cfg.state_dir)
    if cfg.redis.embedded and not os.path.exists(url[len("unix://"):]):
        raise RedisUnavailable(f"the embedded Redis is not running (no socket in {cfg.state_dir}); "
                               f"start the master first: governor run -c {cfg.source}")
    # the config's partition counts: a producer registers one as a master would (enqueue, pause)
    return Client.from_url(url, prefix=cfg.redis.prefix, max_payload=cfg.max_payload, tls=cfg.redis.tls,
                           wait=(cfg.redis.wait_replicas, cfg.redis.wait_timeout),
                           partitions={q.name: q.partitions for q in cfg.queues.values() if q.partitions})


def gather_status(cfg: Config, host: str | None = None) -> StatusDocument:
    """Queues and the fleet's masters from Redis and, when a master runs here, its pools and
    workers from its control socket (fresher than its record in Redis). ``host``: show that
    master's pools and workers instead (a host name, or ``host:pid`` when several run there)."""
    out: StatusDocument = {"config": cfg.source, "master": None, "pools": [], "queues": {}, "fleet": []}
    if host is None:
        _local(cfg, out)
    try:
        client = client_for(cfg)
        out["fleet"] = _fleet(client, cfg, out, host)
        try:
            registered, out["unreadable_queues"], out["unread_queues"] = client.registry()
        except ValueError as exc:  # (too big to read: said, the config's queues shown)
            registered, out["unreadable_queues"], out["unread_queues"] = [], [str(exc)], 0
        for name in sorted(set(cfg.queues) | set(registered)):
            try:
                queue_status(cfg, client, name, out["queues"])
            except ValueError as exc:  # (its registry entries are bad: say so, show the others)
                out["queues"][name] = {"error": str(exc)}
    except (redis.RedisError, RedisUnavailable) as exc:
        out["redis_error"] = str(exc)
    return out


def _local(cfg: Config, out: StatusDocument) -> None:
    """This host's master, from its control socket: nothing when none answers."""
    from governor.ops import control
    try:
        live = control.request(cfg.state_dir, "status")
        out["master"], out["pools"] = live["master"], live["pools"]
        out["partitions"] = live.get("partitions", {})  # this master's leases, and why it serves none
        out["handlers"] = live.get("handlers", {})  # per handler: counts, run times, limits
    except (OSError, ValueError):
        pass


def _fleet(client: Client, cfg: Config, out: StatusDocument, host: str | None) -> list[FleetRecord]:
    """The registry's records, this host's master's from its socket; with ``host``, that
    master's only (and its pools and workers become the document's)."""
    records: list[Any] = fleet(client.redis, cfg.redis.prefix)
    here = out["master"]
    if here:  # this host's master from its socket: fresher than its last heartbeat
        # (its record's master keeps what only the record has: version, started)
        records = [m if (m.get("master") or {}).get("pid") != here.get("pid")
                   or (m.get("master") or {}).get("host") != here.get("host")
                   else {**m, "master": {**m["master"], **here}, "pools": out["pools"]}
                   for m in records]
    if host is not None:
        records = [m for m in records if _is_host(m, host)]
        if records:
            record = records[0]
            out["master"], out["pools"] = record.get("master"), record.get("pools", [])
            out["handlers"] = record.get("handlers", {})
    return records


def queue_status(cfg: Config, client: Client, name: str, into: dict[str, QueueStatus]) -> None:
    """One queue's part of ``gather_status``, in ``into[name]`` from its first read on (a
    Redis failure half-way keeps what was read); ValueError when its registry entries are bad."""
    st: Any = client.counts(name)
    into[name] = st
    st["recent_dead"] = [dead_job(j) for j in client.dead(name, limit=5)]
    n = client.partitions(name)
    if n:
        st["partitions"] = partition_view(n, client.partition_holders(name))
    if name in cfg.queues:
        q = cfg.queues[name]
        rules = rules_for(cfg.redis.prefix, q, cfg.limiters)
        st["limits"] = usage(client.redis, rules)
        st["global_concurrency"] = q.global_concurrency


def _is_host(record: dict[str, Any], host: str) -> bool:
    """``--host NAME``: the master's host name, or ``host:pid`` to pick one of several."""
    m = record.get("master") or {}
    return host in (m.get("host"), f"{m.get('host')}:{m.get('pid')}", master_name(record.get("id", "")))
