"""The control socket: a unix socket in the state directory that answers ``status``.

It is how ``governor status`` sees live workers. Mode 0600: only the user the
master runs as may ask. Requests are one line; the answer is one JSON document,
then the master closes the connection. The master serves it from its own loop,
so each request is bounded by a short socket timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Callable
from typing import Any

SOCKET_NAME = "control.sock"


def socket_path(state_dir: str) -> str:
    return os.path.join(state_dir, SOCKET_NAME)


class ControlServer:
    def __init__(self, state_dir: str, handlers: dict[str, Callable[[], Any]]) -> None:
        self.path = socket_path(state_dir)
        self.handlers = handlers
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.sock.bind(self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self.sock.listen(16)
        self.sock.setblocking(False)


    def serve_one(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return
        with conn:
            conn.settimeout(0.25)  # one recv of one line: a silent client costs the loop 0.25 s at most
            try:
                command = conn.recv(256).decode(errors="replace").strip()
                handler = self.handlers.get(command)
                reply = handler() if handler else {"error": f"unknown command {command!r}"}
                conn.sendall(json.dumps(reply).encode())
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def request(state_dir: str, command: str, timeout: float = 2.0) -> Any:
    """Asks a running master; raises OSError when none listens."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(socket_path(state_dir))
        s.sendall(command.encode() + b"\n")
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    return json.loads(b"".join(chunks))
