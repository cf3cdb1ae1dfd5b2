"""A tiny HTTP/1.0 endpoint served from the master's own loop: /metrics and /healthz.

No thread: a thread in a process that forks is a lock held at the wrong
moment waiting to happen, and serving from the loop makes /healthz honest: if
the loop is stuck, nothing answers. Connections are non-blocking
(governor.serving), so neither a slow nor a silent client, nor a crowd of them,
can hold the loop that enforces hard time limits.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from governor.ops.serving import Server

Handler = Callable[[], tuple[int, str, bytes]]
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


def _parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class HttpServer(Server):
    cap = 32  # a scraper and a probe or two need a handful; the rest is a crowd
    timeout = 2.0  # accept to last byte: Prometheus's default scrape timeout is 10 s
    max_request = 8192  # the request line and headers; a longer head is answered from its start

    def __init__(self, listen: str, routes: dict[str, Handler]) -> None:
        host, port = _parse_listen(listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
        super().__init__(sock)
        self.routes = routes

    def request_complete(self, request: bytes) -> bool:
        return b"\r\n\r\n" in request or b"\n\n" in request

    def respond(self, request: bytes) -> bytes:
        parts = request.split(b"\r\n", 1)[0].split()
        method = parts[0].decode(errors="replace") if parts else ""
        path = parts[1].decode(errors="replace").split("?", 1)[0] if len(parts) > 1 else ""
        if method not in ("GET", "HEAD"):
            status, ctype, body = 405, "text/plain", b"GET only\n"
        elif path in self.routes:
            status, ctype, body = self.routes[path]()
        else:
            status, ctype, body = 404, "text/plain", b"try /metrics or /healthz\n"
        head = (f"HTTP/1.0 {status} {_REASONS.get(status, '')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        return head + (b"" if method == "HEAD" else body)
