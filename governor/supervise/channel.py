"""The master <-> worker channel: a SOCK_SEQPACKET socketpair carrying small JSON lists.

SEQPACKET keeps message boundaries (no framing code) and, unlike a pipe, a
message a worker sent just before it died is still readable after its death,
so the master learns the last job a worker started even when it reaps it.

Worker -> master: ``["ready"]``, ``["start", job_id, token, handler, attempt,
soft_s, hard_s]``, ``["end", job_id, outcome, seconds]``, ``["exit", reason]``,
``["fatal", error]`` and ``["recycle", reason]``, the one question: the master
answers ``go`` or ``later`` (at most ``recycle.max_concurrent`` per pool at once).
Master -> worker, besides that answer: ``drain``.
"""

from __future__ import annotations

import json
import socket
from typing import Any

MAX_MESSAGE = 64 * 1024


def pair() -> tuple[socket.socket, socket.socket]:
    """(master end, worker end); the master end is non-blocking."""
    master, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    master.setblocking(False)
    return master, worker


def encode(*message: Any) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def receive_all(sock: socket.socket) -> tuple[list[list[Any]], bool]:
    """Every message now readable, and whether the peer has closed its end."""
    messages = []
    while True:
        try:
            data = sock.recv(MAX_MESSAGE)
        except (BlockingIOError, InterruptedError):
            return messages, False
        except OSError:
            return messages, True
        if not data:
            return messages, True
        try:
            msg = json.loads(data)
        except ValueError:
            continue
        if isinstance(msg, list) and msg and isinstance(msg[0], str):
            messages.append(msg)


class WorkerEnd:
    """The worker's side: fire-and-forget sends; a dead master means we are about to die too.

    The master writes two things here: the answer to ``recycle`` and ``drain`` (sent
    along with SIGTERM, so a drain survives a job that ignored or blocked the signal).
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lost = False  # the descriptor was closed under us: never write to it again
        self._drain = False

    def send(self, *message: Any) -> None:
        if self.lost:
            return
        try:
            self.sock.send(encode(*message))
        except OSError:
            pass

    def _note(self, data: bytes) -> bytes | None:
        """Keeps a drain request aside; returns any other message."""
        if data == b"drain":
            self._drain = True
            return None
        return data

    def drain_requested(self) -> bool:
        """True once the master has asked for a drain (reads what is waiting, never blocks)."""
        while not self._drain:
            try:
                data = self.sock.recv(MAX_MESSAGE, socket.MSG_DONTWAIT)
            except OSError:  # nothing waiting (EAGAIN), or the master is gone
                break
            if not data:
                break
            self._note(data)
        return self._drain

    def ask(self, *message: Any, timeout: float = 5.0) -> str | None:
        """Sends a question and waits for the master's one-word answer (None: no answer)."""
        self.send(*message)
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(MAX_MESSAGE)
                if not data:
                    return None
                answer = self._note(data)
                if answer is not None:
                    return answer.decode()
        except OSError:
            return None
        finally:
            self.sock.settimeout(None)
