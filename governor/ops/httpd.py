"""A tiny HTTP/1.0 endpoint served from the master's own loop: /metrics, /healthz and the page.

No thread: a thread in a process that forks is a lock held at the wrong
moment waiting to happen, and serving from the loop makes /healthz honest: if
the loop is stuck, nothing answers. Connections are non-blocking
(governor.serving), so neither a slow nor a silent client, nor a crowd of them,
can hold the loop that enforces hard time limits.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass

from governor.ops.serving import Server

Handler = Callable[[], tuple[int, str, bytes]]
_REASONS = {200: "OK", 303: "See Other", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 413: "Content Too Large", 503: "Service Unavailable"}


@dataclass(frozen=True)
class Request:
    """A POST as its handler sees it (small: the whole request fits in max_request)."""

    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes


PostHandler = Callable[[Request], tuple[int, str, bytes]]


def _split(request: bytes) -> tuple[bytes, bytes]:
    for sep in (b"\r\n\r\n", b"\n\n"):
        head, found, body = request.partition(sep)
        if found:
            return head, body
    return request, b""


def _headers(head: bytes) -> dict[str, str]:
    out = {}
    for line in head.decode("latin-1").splitlines()[1:]:
        name, colon, value = line.partition(":")
        if colon:
            out[name.strip().lower()] = value.strip()
    return out


def _length(headers: dict[str, str]) -> int:
    """The body's length, or -1 for anything but 1-5 ASCII digits (a request fits in 8 KiB)."""
    raw = headers.get("content-length", "0")
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 5 else -1


def _parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class HttpServer(Server):
    cap = 32  # a scraper and a probe or two need a handful; the rest is a crowd
    timeout = 2.0  # accept to last byte: Prometheus's default scrape timeout is 10 s
    max_request = 8192  # the request line and headers; a longer head is answered from its start

    def __init__(self, listen: str, routes: dict[str, Handler], posts: dict[str, PostHandler] | None = None) -> None:
        host, port = _parse_listen(listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
        super().__init__(sock)
        self.routes = routes
        self.posts = posts or {}

    def request_complete(self, request: bytes) -> bool:
        if b"\r\n\r\n" not in request and b"\n\n" not in request:
            return False
        if not request.startswith(b"POST"):
            return True
        head, body = _split(request)
        return len(body) >= max(0, _length(_headers(head)))  # (max_request bounds the wait too)

    def respond(self, request: bytes) -> bytes:
        parts = request.split(b"\r\n", 1)[0].split()
        method = parts[0].decode(errors="replace") if parts else ""
        path = parts[1].decode(errors="replace").split("?", 1)[0] if len(parts) > 1 else ""
        if method == "POST" and path in self.posts:
            head, payload = _split(request)
            headers = _headers(head)
            length = _length(headers)
            if length < 0 or len(payload) < length:
                status, ctype, body = 413 if length > 0 else 400, "text/plain", b"a whole request of at most 8 KiB\n"
            else:
                status, ctype, body = self.posts[path](Request(path, headers, payload[:length]))
        elif method not in ("GET", "HEAD"):
            status, ctype, body = 405, "text/plain", b"GET only (POST to /action)\n"
        elif path in self.routes:
            status, ctype, body = self.routes[path]()
        else:
            status, ctype, body = 404, "text/plain", b"try /, /metrics or /healthz\n"
        head = (f"HTTP/1.0 {status} {_REASONS.get(status, '')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        return head + (b"" if method == "HEAD" else body)
