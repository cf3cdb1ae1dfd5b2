"""The control socket: a unix socket in the state directory that answers ``status``.

It is how ``governor status`` sees live workers. Mode 0600: only the user the
master runs as may ask. Requests are one line; the answer is one JSON document,
then the master closes the connection. The master serves it from its own loop
with non-blocking connections (governor.serving), so a client that connects
and says nothing costs the loop nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Callable
from typing import Any

from governor.ops.serving import Server

SOCKET_NAME = "control.sock"


def socket_path(state_dir: str) -> str:
    return os.path.join(state_dir, SOCKET_NAME)


class ControlServer(Server):
    cap = 16  # `governor status --watch` in a few terminals, and scripts
    timeout = 2.0  # the client's own default timeout (request() below)
    max_request = 256  # a command is a word

    def __init__(self, state_dir: str, handlers: dict[str, Callable[[], Any]]) -> None:
        self.path = socket_path(state_dir)
        self.handlers = handlers
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(16)
        super().__init__(sock)

    def request_complete(self, request: bytes) -> bool:
        return b"\n" in request

    def respond(self, request: bytes) -> bytes:
        command = request.split(b"\n", 1)[0].decode(errors="replace").strip()
        handler = self.handlers.get(command)
        reply = handler() if handler else {"error": f"unknown command {command!r}"}
        return json.dumps(reply).encode()

    def close(self) -> None:
        super().close()
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
