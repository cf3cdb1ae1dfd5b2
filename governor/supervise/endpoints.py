"""What operators' tools reach on this master: the control socket, and on ``metrics.listen``
/metrics, /healthz and the web page. Runs in: master.

Built once the master's Redis, read model and health exist, owned here so the master's
start, its cleanup and the list of descriptors a worker must close name them in one place.
"""

from __future__ import annotations

import logging
import selectors
import time
from collections.abc import Callable, Mapping
from typing import Any

from governor.config import Config
from governor.ops.control import ControlServer
from governor.ops.httpd import HttpServer
from governor.ops.web import WebPage
from governor.protocol.queue import Client

log = logging.getLogger("governor.master")


class Endpoints:
    """The control socket, and the HTTP server with the web page when ``metrics.listen`` is set."""

    def __init__(self) -> None:
        self.control: ControlServer | None = None
        self.http: HttpServer | None = None
        self.web: WebPage | None = None

    def start(self, selector: selectors.BaseSelector, *, config: Callable[[], Config], redis: Any,
              snapshots: Any, health: Any, redis_ok: Callable[[], bool], pools: Mapping[str, Any],
              stats: Callable[[str, float], dict], master_id: str, stopping: Callable[[], Any]) -> None:
        cfg = config()
        self.control = ControlServer(cfg.state_dir, {"status": snapshots.status})
        self.control.attach(selector)
        if not cfg.metrics.listen:
            return
        self.web = WebPage(Client(redis, cfg.redis.prefix), cfg.web.token, redis_ok,
                           lambda: [p.config for p in pools.values()],
                           lambda: {name: stats(name, time.monotonic()) for name in pools},
                           (master_id, snapshots.fleet_record))
        self.http = HttpServer(cfg.metrics.listen,
                               {"/metrics": snapshots.serve_metrics,
                                "/healthz": lambda: health.serve(stopping() and stopping().value),
                                "/": self.web.page}, posts={"/action": self.web.action},
                               guarded=("/", "/action"), hosts=lambda: config().web.hosts)
        self.web.on_view = self.http.resume  # a page waiting for its view is answered
        self.http.attach(selector)
        log.info("metrics on http://%s/metrics", cfg.metrics.listen)

    def servers(self) -> tuple[Any, Any]:
        return self.control, self.http

    def fds(self) -> list[int]:
        """The listening sockets, even while a server has paused accepting (then not in the
        selector's map): a forked worker closes them."""
        return [s.sock.fileno() for s in (self.control, self.http) if s]

    def close(self) -> None:
        for server in (self.control, self.http):
            if server:
                server.close()
