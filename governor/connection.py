"""From a ``redis.url`` to a redis-py client, the same way in master, workers and CLI.

One place decides how URLs map to connections so that ``embedded``, unix
sockets and (later) TLS and Sentinel behave identically everywhere.
"""

from __future__ import annotations

import os

import redis

EMBEDDED_SOCKET = "redis.sock"


class RedisUnavailable(RuntimeError):
    """The configured Redis cannot be reached; the message says which and why."""


def resolve_url(url: str, state_dir: str) -> str:
    """``embedded`` means the private redis-server the master runs in its state directory."""
    if url == "embedded":
        return "unix://" + os.path.join(state_dir, EMBEDDED_SOCKET)
    return url


def connect(url: str, *, socket_timeout: float | None = 10.0, name: str | None = None) -> redis.Redis:
    """A client for ``url``. ``socket_timeout=None`` is for connections that block in BLPOP."""
    kwargs: dict = {"socket_connect_timeout": 5.0, "socket_timeout": socket_timeout}
    if not url.startswith("unix://"):
        kwargs["socket_keepalive"] = True
    if name:
        kwargs["client_name"] = name
    return redis.Redis.from_url(url, **kwargs)
