"""From a ``redis.url`` to a redis-py client, the same way in master, workers and CLI.

One place decides how URLs map to connections so that ``embedded``, unix
sockets and (later) TLS and Sentinel behave identically everywhere.
"""

from __future__ import annotations

import os
from typing import Any

import redis

from governor.config import TlsConfig

EMBEDDED_SOCKET = "redis.sock"


_TRANSIENT_REPLIES = ("OOM", "MISCONF", "NOREPLICAS", "READONLY", "LOADING", "BUSY", "MASTERDOWN",
                      "TRYAGAIN", "CLUSTERDOWN", "UNBLOCKED")


def is_transient(exc: BaseException) -> bool:
    """Errors to ride out with backoff (an outage, a failover, a full or read-only Redis),
    as opposed to bugs, which should fail loudly."""
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return True
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(_TRANSIENT_REPLIES)


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
    kwargs: dict = {"socket_connect_timeout": 5.0, "socket_timeout": socket_timeout, **extra}
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
    from urllib.parse import unquote

    from redis.sentinel import Sentinel

    rest = url[len("redis+sentinel://"):]
    auth, _, rest = rest.rpartition("@")
    hosts, _, path = rest.partition("/")
    service, _, db = path.strip("/").partition("/")
    if not service:
        raise ValueError("a redis+sentinel:// URL names the service: redis+sentinel://host:26379/mymaster/0")
    nodes = []
    for node in hosts.split(","):
        host, _, port = node.rpartition(":") if ":" in node else (node, "", "26379")
        nodes.append((host.strip("[]"), int(port)))
    username, _, password = auth.partition(":") if ":" in auth else ("", "", auth)
    timeouts = {k: kwargs[k] for k in ("socket_timeout", "socket_connect_timeout")}
    sentinel = Sentinel(nodes, **timeouts)
    return sentinel.master_for(service, db=int(db or 0), username=unquote(username) or None,
                               password=unquote(password) or None, **kwargs)
