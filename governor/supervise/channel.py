"""The master <-> worker channel: a SOCK_SEQPACKET socketpair carrying small JSON lists.

SEQPACKET keeps message boundaries (no framing code) and, unlike a pipe, a
message a worker sent just before it died is still readable after its death,
so the master learns the last job a worker started even when it reaps it.

Worker -> master: ``["ready"]``, ``["start", job_id, token, handler, attempt,
soft_s, hard_s]``, ``["end", job_id, outcome, seconds]``, ``["exit", reason]``,
``["fatal", error]`` and ``["recycle", reason]``, the one question: the master
answers ``go`` or ``later`` (at most ``recycle.max_concurrent`` per pool at once).
Master -> worker, besides that answer: ``drain``.

Job code runs in the worker and can write on its end, so every message is checked
against its one shape (``well_formed``) before the master acts on it: a worker that
sends anything else is replaced, and the master never dies of what a worker says.
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


# Why a worker may say it leaves (``exit``) or ask to (``recycle``). Anything else is a lie:
# these strings become metric labels and exit reasons, so they come from a closed set.
EXIT_REASONS = frozenset({"drain", "channel_lost", "max_jobs", "max_age", "protocol_error", "program_exited"})
RECYCLE_REASONS = frozenset({"max_jobs", "max_age"})
MAX_FATAL = 4000  # characters of a worker's last words kept
MAX_PER_READ = 64  # messages taken per readiness: a worker that floods its channel cannot hold the loop

# The one shape each message may have: its kind, then the values it carries.
_SHAPES: dict[str, tuple[type, ...]] = {"ready": (), "busy": (), "exit": (str,), "fatal": (str,),
                                        "recycle": (str,)}


def well_formed(msg: Any) -> bool:
    """True for a message of a known kind with exactly the values of its kind, each of its type
    (and, for a reason, one of the known ones). Job code can write on its worker's channel:
    what a worker says is untrusted input, checked before the master acts on any of it."""
    if not (isinstance(msg, list) and msg and isinstance(msg[0], str)):
        return False
    shape = _SHAPES.get(msg[0])
    if shape is None or len(msg) != 1 + len(shape):
        return False
    if not all(isinstance(value, kind) for value, kind in zip(msg[1:], shape, strict=True)):
        return False
    if msg[0] == "exit":
        return msg[1] in EXIT_REASONS
    if msg[0] == "recycle":
        return msg[1] in RECYCLE_REASONS
    return True


def receive_all(sock: socket.socket) -> tuple[list[list[Any]], bool, int]:
    """The well-formed messages now readable (at most MAX_PER_READ: the rest wait for the
    next pass), whether the peer has closed its end, and how many were malformed."""
    messages: list[list[Any]] = []
    malformed = 0
    for _ in range(MAX_PER_READ):
        try:
            data = sock.recv(MAX_MESSAGE)
        except (BlockingIOError, InterruptedError):
            return messages, False, malformed
        except OSError:
            return messages, True, malformed
        if not data:
            return messages, True, malformed
        try:
            msg = json.loads(data)
        except (ValueError, RecursionError):
            msg = None
        if well_formed(msg):
            messages.append(msg)
        else:
            malformed += 1
    return messages, False, malformed


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

    def _late(self, data: bytes) -> None:
        """A message read outside ``ask``: a drain, or the answer to a question we gave up
        on. A late ``go`` granted our retirement: the master counts on us leaving, so it is
        a drain (a late ``later`` means nothing now)."""
        if data in (b"drain", b"go"):
            self._drain = True

    def drain_requested(self) -> bool:
        """True once the master has asked for a drain (reads what is waiting, never blocks)."""
        while not self._drain:
            try:
                data = self.sock.recv(MAX_MESSAGE, socket.MSG_DONTWAIT)
            except OSError:  # nothing waiting (EAGAIN), or the master is gone
                break
            if not data:
                break
            self._late(data)
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
