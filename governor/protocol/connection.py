"""From a ``redis.url`` to a redis-py client, the same way in master, workers and CLI.

One place decides how URLs map to connections so that ``embedded``, unix
sockets, TLS, Sentinel and Cluster behave identically everywhere.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialBackoff, ExponentialWithJitterBackoff
from redis.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.retry import Retry

from governor import redisurl
from governor.config import TlsConfig

EMBEDDED_SOCKET = "redis.sock"

# How long a Cluster command keeps retrying while a primary fails over: the cluster notices
# the dead primary after cluster-node-timeout (15 s by default, 1 s in the tests), then a
# replica wins an election within about a second. Settable per client (``failover_window``).
CLUSTER_FAILOVER_WINDOW = 15.0
# between tries: 50 ms, 100 ms, ... then every 500 ms, so work resumes within about half a
# second of the promotion without hammering the survivors meanwhile
_FAILOVER_BACKOFF = ExponentialBackoff(cap=0.5, base=0.05)

T = TypeVar("T")


_TRANSIENT_REPLIES = ("OOM", "MISCONF", "NOREPLICAS", "READONLY", "LOADING", "BUSY", "MASTERDOWN",
                      "TRYAGAIN", "CLUSTERDOWN", "UNBLOCKED")


# redis-py turns some error replies into classes and strips the code from the message
# ("READONLY You can't write..." arrives as ReadOnlyError("You can't write...")), so the
# code is looked for both ways.
_TRANSIENT_CLASSES = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ReadOnlyError,
                      redis.exceptions.OutOfMemoryError, redis.exceptions.BusyLoadingError,
                      redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError,
                      redis.exceptions.AskError, redis.exceptions.SlotNotCoveredError)

# What a Cluster client meets while a primary fails over: the dead primary refuses
# connections (ConnectionError) until the survivors mark it failed, they then answer
# CLUSTERDOWN (ClusterDownError, MasterDownError), and once a replica is promoted, MOVED
# (AskError's subclass MovedError) or a slot map without the slot (SlotNotCoveredError).
# redis-py follows MOVED and retries the rest a few times, but without pausing; the errors
# that escape are ridden out here with backoff.
_FAILOVER_CLASSES = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterDownError,
                     redis.exceptions.TryAgainError, redis.exceptions.AskError,
                     redis.exceptions.SlotNotCoveredError, redis.exceptions.ReadOnlyError,
                     redis.exceptions.ClusterError)
# a wrong password or a full connection pool is not cured by waiting for a failover
_NOT_FAILOVER = (redis.AuthenticationError, redis.exceptions.AuthorizationError,
                 redis.exceptions.MaxConnectionsError)
# redis-py's RedisClusterException (not a RedisError) also says "no node answered": these
# messages mean that; its other messages are bugs (keys in several slots, no key at all).
_UNREACHABLE = ("Redis Cluster cannot be connected", "All slots are not covered")


class ClusterUnavailable(redis.ConnectionError):
    """No node of the Cluster could serve the command (a RedisError, unlike redis-py's
    RedisClusterException it replaces, so code that handles Redis outages handles it)."""


def is_transient(exc: BaseException) -> bool:
    """Errors to ride out with backoff (an outage, a failover, a full or read-only Redis),
    as opposed to bugs, which should fail loudly."""
    if isinstance(exc, _TRANSIENT_CLASSES) or _cluster_unreachable(exc):
        return True
    if isinstance(exc, redis.exceptions.ClusterError) and "TTL exhausted" in str(exc):
        return True  # redirected back and forth while slots moved
    return isinstance(exc, redis.ResponseError) and str(exc).lstrip("-").startswith(_TRANSIENT_REPLIES)


def _cluster_unreachable(exc: BaseException) -> bool:
    return (isinstance(exc, redis.exceptions.RedisClusterException)
            and not isinstance(exc, redis.exceptions.CrossSlotTransactionError)
            and _refusal(exc) is None
            and (isinstance(exc, redis.exceptions.SlotNotCoveredError)
                 or str(exc).startswith(_UNREACHABLE)))


def _refusal(exc: BaseException) -> BaseException | None:
    """The AuthenticationError (wrong password) or AuthorizationError inside redis-py's
    "Redis Cluster cannot be connected", which would otherwise read as an outage."""
    cause = exc.__cause__
    if isinstance(exc, redis.exceptions.RedisClusterException) and isinstance(cause, _NOT_FAILOVER):
        return cause
    return None


def _failover_error(exc: BaseException) -> bool:
    if isinstance(exc, _NOT_FAILOVER):
        return False
    return isinstance(exc, _FAILOVER_CLASSES) or _cluster_unreachable(exc)


def ride_out_failover(call: Callable[[], T], window: float,
                      refresh: Callable[[], None] = lambda: None) -> T:
    """``call()``, retried with backoff for up to ``window`` seconds while it fails the way
    a Cluster does during a failover; an unreachable cluster surfaces as ClusterUnavailable.

    A command whose connection broke after it was sent may have run; it is sent again
    anyway, as redis-py itself does for Cluster and standalone clients: governor's scripts
    are safe to repeat (enqueue by id, settle by fencing token)."""
    deadline = time.monotonic() + window
    failures = 0
    while True:
        try:
            return call()
        except Exception as exc:
            refusal = _refusal(exc)
            if refusal is not None:
                raise refusal from None  # as a single Redis raises it: a RedisError
            if not _failover_error(exc):
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                refresh()  # so the caller's next try asks the right node
                if isinstance(exc, redis.RedisError):
                    raise
                raise ClusterUnavailable(str(exc)) from exc
            failures += 1
            time.sleep(min(_FAILOVER_BACKOFF.compute(failures), left))
            refresh()


class RedisUnavailable(RuntimeError):
    """The configured Redis cannot be reached; the message says which and why."""


def resolve_url(url: str, state_dir: str) -> str:
    """``embedded`` means the private redis-server the master runs in its state directory."""
    if url == "embedded":
        return "unix://" + os.path.join(state_dir, EMBEDDED_SOCKET)
    return url


def connect(url: str, *, socket_timeout: float | None = 10.0, name: str | None = None,
            tls: TlsConfig | None = None, **extra: Any) -> redis.Redis:
    """A client for ``url``. ``socket_timeout=None`` is for connections that block in BLPOP.

    ``rediss://`` uses ``tls`` (CA, client certificate and key files);
    ``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]`` asks the
    Sentinels for the current master and follows it across failovers;
    ``redis+cluster://[user:password@]host:port[,host:port...]/`` (``rediss+cluster://``
    with TLS) returns a ``RedisCluster`` that follows slots and rides out a primary's
    failover (see ``FailoverCluster``). Unlike the others, a Cluster client asks a seed node
    for the slot map at once: with no node reachable this raises ClusterUnavailable.
    """
    # surrogateescape: a job id read from Redis that is not UTF-8 (written there by something
    # other than governor) decodes to a str that encodes back to the same bytes, so it can
    # still be settled or dead-lettered.
    kwargs: dict = {"socket_connect_timeout": 5.0, "socket_timeout": socket_timeout,
                    "encoding_errors": "surrogateescape", **extra}
    if not url.startswith("unix://"):
        kwargs["socket_keepalive"] = True
    if name:
        kwargs["client_name"] = name
    if tls and (tls.ca or tls.cert):
        kwargs.update(ssl_ca_certs=tls.ca, ssl_certfile=tls.cert, ssl_keyfile=tls.key)
    if url.startswith("redis+sentinel://"):
        return _sentinel_master(url, kwargs)
    if redisurl.is_cluster(url):
        return _cluster(url, kwargs)
    return redis.Redis.from_url(url, **kwargs)


def _sentinel_master(url: str, kwargs: dict) -> redis.Redis:
    """Read with the same parse that masks the URL, so what is hidden is what is sent."""
    from redis.sentinel import Sentinel

    parsed = redisurl.parse(url)
    nodes = [(host, port or redisurl.DEFAULT_PORTS["redis+sentinel"]) for host, port in parsed.hosts]
    timeouts = {k: kwargs[k] for k in ("socket_timeout", "socket_connect_timeout")}
    sentinel = Sentinel(nodes, **timeouts)
    return sentinel.master_for(parsed.service, db=parsed.db or 0, username=parsed.auth_username,
                               password=parsed.auth_password, **kwargs)


def _cluster(url: str, kwargs: dict) -> FailoverCluster:
    """Seeds, user and password from the same parse that masks the URL; TLS for rediss+."""
    parsed = redisurl.parse(url)
    port = redisurl.DEFAULT_PORTS[parsed.scheme]
    nodes = [ClusterNode(host, p or port) for host, p in parsed.hosts]
    if parsed.auth_username:
        kwargs["username"] = parsed.auth_username
    if parsed.auth_password:
        kwargs["password"] = parsed.auth_password
    if parsed.scheme == "rediss+cluster":
        kwargs["ssl"] = True
    try:
        # require_full_coverage=False: a slot map with a gap (a primary just died) is still
        # taken, and commands for the other slots go on; the gap's commands are ridden out
        return FailoverCluster(startup_nodes=nodes, require_full_coverage=False,
                               retry=Retry(ExponentialWithJitterBackoff(cap=0.5, base=0.05), 3),
                               **kwargs)
    except redis.exceptions.RedisClusterException as exc:
        refusal = _refusal(exc)
        if refusal is not None:
            raise refusal from None
        if _cluster_unreachable(exc):
            raise ClusterUnavailable(str(exc)) from exc
        raise


class FailoverCluster(RedisCluster):
    """A RedisCluster whose commands and pipelines survive a primary's failover.

    redis-py follows MOVED/ASK and retries connection errors and CLUSTERDOWN a few times,
    but back to back (its ``retry`` sets only how many times), so a command for a dead
    primary's slot fails within milliseconds, long before a replica is promoted. Here each
    command and pipeline is retried with backoff for up to ``failover_window`` seconds
    (``ride_out_failover``), so callers see a failover as a pause, not an error.
    """

    failover_window: float = CLUSTER_FAILOVER_WINDOW

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        call = super().execute_command
        return ride_out_failover(lambda: call(*args, **kwargs), self.failover_window, self.refresh)

    def refresh(self) -> None:
        """Reads the slot map again before a retry. redis-py re-reads it only every few
        errors, and a map read while the election is still running names the dead primary:
        a client could go on asking it until the next re-read, which seen from a worker
        that retries with backoff can be a long time."""
        try:
            self.nodes_manager.initialize()
        except Exception:  # no node answered yet: the next retry asks again
            pass

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> FailoverPipeline:
        pipe = super().pipeline(transaction, shard_hint)
        # the same object with one method more: redis-py builds it from private state, which
        # a copy of its constructor call would have to track from release to release
        pipe.__class__ = FailoverPipeline
        pipe.failover_window = self.failover_window
        pipe.cluster_refresh = self.refresh
        return pipe


class FailoverPipeline(ClusterPipeline):
    """A ClusterPipeline whose ``execute`` is retried like ``FailoverCluster``'s commands.

    A failed try empties the pipeline, so each retry queues the same commands again. A
    pipeline that WATCHes is not retried: the retry would run without the watch."""

    failover_window: float = CLUSTER_FAILOVER_WINDOW
    cluster_refresh: Callable[[], None] = staticmethod(lambda: None)

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        strategy = self._execution_strategy
        if getattr(strategy, "_watching", False) or getattr(strategy, "_explicit_transaction", False):
            return super().execute(raise_on_error)
        queued = [(c.args, dict(c.options)) for c in strategy.command_queue]
        first = True

        def attempt() -> list[Any]:
            nonlocal first
            if not first:
                for args, options in queued:
                    options = dict(options)
                    if "target_nodes" in options and str(args[0]).upper() in ("EVAL", "EVALSHA"):
                        # routed by its first key: to whichever node serves that slot now
                        options["target_nodes"] = self.get_node_from_key(args[3])
                    strategy.execute_command(*args, **options)
            first = False
            return ClusterPipeline.execute(self, raise_on_error)

        return ride_out_failover(attempt, self.failover_window, self.cluster_refresh)


def is_cluster(client: Any) -> bool:
    """A Redis Cluster client (from a ``redis+cluster://`` URL)."""
    return isinstance(client, RedisCluster)


def _pools(client: Any) -> list[Any]:
    """Every connection pool a client holds: one for Redis; with Sentinel, also one per
    Sentinel; for a Cluster, one per node it knows (and per seed node)."""
    if isinstance(client, RedisCluster):
        manager = client.nodes_manager
        nodes = [*manager.nodes_cache.values(), *manager.startup_nodes.values()]
        redises = {id(n.redis_connection): n.redis_connection for n in nodes if n.redis_connection}
        return [r.connection_pool for r in redises.values()]
    pools = [client.connection_pool]
    manager = getattr(client.connection_pool, "sentinel_manager", None)
    if manager is not None:
        pools += [s.connection_pool for s in manager.sentinels]
    return pools


def socket_fds(client: Any) -> list[int]:
    """The descriptors of a client's open connections (for Sentinel, also of its connections
    to the Sentinels; for a Cluster, to every node), so a forked child can close them before
    it runs any job code."""
    if client is None:
        return []
    fds = []
    for pool in _pools(client):
        conns = [*getattr(pool, "_available_connections", []), *getattr(pool, "_in_use_connections", [])]
        for conn in conns:
            sock = getattr(conn, "_sock", None)
            if sock is not None and sock.fileno() >= 0:
                fds.append(sock.fileno())
    return fds


def disconnect(client: Any) -> None:
    """Closes every connection of a client of any kind (Redis, Sentinel master, Cluster), in
    use or idle, so the next command starts on a fresh one: after a reply was half read, or
    when a connection may be shared with a forked child. The client stays usable."""
    if client is None:
        return
    for pool in _pools(client):
        pool.disconnect()
