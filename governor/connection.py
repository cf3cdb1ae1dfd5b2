"""From a ``redis.url`` to a redis-py client, the same way in master, workers and CLI.

One place decides how URLs map to connections so that ``embedded``, unix
sockets and (later) TLS and Sentinel behave identically everywhere.
"""

from __future__ import annotations

import os
from typing import Any

import redis

from governor import redisurl
from governor.config import TlsConfig

EMBEDDED_SOCKET = "redis.sock"


_TRANSIENT_REPLIES = ("OOM", "MISCONF", "NOREPLICAS", "READONLY", "LOADING", "BUSY", "MASTERDOWN",
                      "TRYAGAIN", "CLUSTERDOWN", "UNBLOCKED")


# redis-py turns some error replies into classes and strips the code from the message
# ("READONLY You can't write..." arrives as ReadOnlyError("You can't write...")), so the
# code is looked for both ways.
_TRANSIENT_CLASSES = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ReadOnlyError,
                      redis.exceptions.OutOfMemoryError, redis.exceptions.BusyLoadingError,
                      redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError)


def is_transient(exc: BaseException) -> bool:
    """Errors to ride out with backoff (an outage, a failover, a full or read-only Redis),
    as opposed to bugs, which should fail loudly."""
    if isinstance(exc, _TRANSIENT_CLASSES):
        return True
    return isinstance(exc, redis.ResponseError) and str(exc).lstrip("-").startswith(_TRANSIENT_REPLIES)


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
    Sentinels for the current master and follows it across failovers.
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


def socket_fds(client: redis.Redis | None) -> list[int]:
    """The descriptors of a client's open connections (and, for Sentinel, of its connections
    to the Sentinels), so a forked child can close them before it runs any job code."""
    if client is None:
        return []
    pools = [client.connection_pool]
    manager = getattr(client.connection_pool, "sentinel_manager", None)
    if manager is not None:
        pools += [s.connection_pool for s in manager.sentinels]
    fds = []
    for pool in pools:
        conns = [*getattr(pool, "_available_connections", []), *getattr(pool, "_in_use_connections", [])]
        for conn in conns:
            sock = getattr(conn, "_sock", None)
            if sock is not None and sock.fileno() >= 0:
                fds.append(sock.fileno())
    return fds
