"""A tiny HTTP/1.0 endpoint served from the master's own loop: /metrics and /healthz.

No thread: a thread in a process that forks is a lock held at the wrong
moment waiting to happen, and serving from the loop makes /healthz honest: if
the loop is stuck, nothing answers. Each connection carries one request and is
bounded by a short timeout, so a slow scraper cannot hold the loop for long.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable

Handler = Callable[[], tuple[int, str, bytes]]
_BUDGET = 0.25  # seconds one request may take, reading and writing together
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


def _parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class HttpServer:
    def __init__(self, listen: str, routes: dict[str, Handler]) -> None:
        host, port = _parse_listen(listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(64)
        self.sock.setblocking(False)
        self.routes = routes


    def serve_one(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        with conn:
            # one deadline for the whole exchange: a client dribbling a byte at a time must not
            # hold the master's loop (hard time limits are enforced from it)
            deadline = time.monotonic() + _BUDGET
            try:
                request = b""
                while b"\r\n\r\n" not in request and b"\n\n" not in request and len(request) < 8192:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return
                    conn.settimeout(remaining)
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    request += chunk
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
                conn.settimeout(max(deadline - time.monotonic(), 0.05))
                conn.sendall(head + (b"" if method == "HEAD" else body))
            except OSError:
                pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
