"""A tiny HTTP/1.0 endpoint served from the master's own loop: /metrics, /healthz and the page.

The page and its actions are guarded (governor.ops.guard): another Host is 421, another
site's form 403. Every answer says: not framed, not sniffed, not stored.

No thread: a thread in a process that forks is a lock held at the wrong
moment waiting to happen, and serving from the loop makes /healthz honest: if
the loop is stuck, nothing answers. Connections are non-blocking
(governor.serving), so neither a slow nor a silent client, nor a crowd of them,
can hold the loop that enforces hard time limits.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from governor.ops import guard
from governor.ops.serving import Server

Reply = tuple[int, str, bytes]
Handler = Callable[[], "Reply | None"]  # None: not yet (the connection waits; see Server.resume)
_REASONS = {200: "OK", 303: "See Other", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 413: "Content Too Large", 421: "Misdirected Request",
            503: "Service Unavailable"}


@dataclass(frozen=True)
class Request:
    """A POST as its handler sees it (small: the whole request fits in max_request)."""

    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes


PostHandler = Callable[[Request], Reply]


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

    def __init__(self, listen: str, routes: dict[str, Handler], posts: dict[str, PostHandler] | None = None,
                 guarded: Iterable[str] = (), hosts: Callable[[], Iterable[str]] = tuple) -> None:
        """``guarded``: the paths (the page, its actions) answered only to a ``Host`` that
        guard.host_allowed accepts, given the configured names ``hosts()``; a POST to one
        must also come from the page's own origin."""
        host, port = _parse_listen(listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
        super().__init__(sock)
        self.routes = routes
        self.posts = posts or {}
        self.guarded = frozenset(guarded)
        self.hosts = hosts

    def request_complete(self, request: bytes) -> bool:
        if b"\r\n\r\n" not in request and b"\n\n" not in request:
            return False
        if not request.startswith(b"POST"):
            return True
        head, body = _split(request)
        return len(body) >= max(0, _length(_headers(head)))  # (max_request bounds the wait too)

    def respond(self, request: bytes) -> bytes | None:
        parts = request.split(b"\r\n", 1)[0].split()
        method = parts[0].decode(errors="replace") if parts else ""
        path = parts[1].decode(errors="replace").split("?", 1)[0] if len(parts) > 1 else ""
        head, payload = _split(request)
        headers = _headers(head)
        refused = self._refused(method, path, headers) if path in self.guarded else None
        if refused:
            status, ctype, body = refused
        elif method == "POST" and path in self.posts:
            length = _length(headers)
            if length < 0 or len(payload) < length:
                status, ctype, body = 413 if length > 0 else 400, "text/plain", b"a whole request of at most 8 KiB\n"
            else:
                status, ctype, body = self.posts[path](Request(path, headers, payload[:length]))
        elif method not in ("GET", "HEAD"):
            status, ctype, body = 405, "text/plain", b"GET only (POST to /action)\n"
        elif path in self.routes:
            reply = self.routes[path]()
            if reply is None:
                return None  # answered when the handler has it (Server.resume)
            status, ctype, body = reply
        else:
            status, ctype, body = 404, "text/plain", b"try /, /metrics or /healthz\n"
        head = (f"HTTP/1.0 {status} {_REASONS.get(status, '')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\n{guard.HEADERS}Connection: close\r\n\r\n").encode()
        return head + (b"" if method == "HEAD" else body)

    def _refused(self, method: str, path: str, headers: dict[str, str]) -> Reply | None:
        """Why a guarded path is not answered (DNS rebinding, another site's form), or None.
        /metrics and /healthz are not guarded: scrapers and probes use names and addresses
        no config lists, and neither shows a job's id, arguments or errors."""
        host = headers.get("host")
        if not guard.host_allowed(host, self.hosts()):
            return 421, "text/plain; charset=utf-8", (
                f"this page answers to IP addresses, localhost, this machine's name and the names in "
                f"web.hosts; not to {host[:100]!r} (add it to web.hosts if it is yours)\n").encode()
        origin = headers.get("origin")
        if method == "POST" and origin is not None and not guard.same_origin(origin, host):
            return 403, "text/plain; charset=utf-8", (
                f"refused: this form was sent from another site (Origin {origin[:100]!r}, not "
                f"http://{(host or '')[:100]}); nothing changed\n").encode()
        return None
