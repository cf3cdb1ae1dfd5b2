"""Non-blocking request/reply connections served from the master's selector loop.

The master enforces hard time limits from the same loop that answers /healthz
and ``governor status``, so no client may hold that loop: not a silent one, not
one dribbling a byte at a time, not a thousand of them. Every socket here is
non-blocking and registered in the master's selector; a connection only ever
costs the loop one ``recv`` or one ``send`` per readiness event.

Each connection carries one request and one reply (then it is closed), and has
one deadline for the whole exchange, counted from accept: a connection that has
not received its request, or not taken its reply, by then is closed when the
master calls :meth:`Server.expire`. At most ``cap`` connections are open per
server; a new client arriving at the cap closes the connection with the nearest
deadline (the oldest), so a fresh client, such as a liveness probe, is still
served while idle clients crowd the port, and the master's descriptors stay
bounded. When accept fails for want of descriptors (EMFILE, ENFILE), the
listening socket stops being watched for ``ACCEPT_PAUSE`` seconds instead of
waking the loop at once, over and over.

A subclass says when a request is complete and what its reply is; the reply is
computed synchronously, in the loop, when the request is complete.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import time

log = logging.getLogger("governor.serving")

ACCEPT_PAUSE = 0.25  # seconds accept rests after failing for want of descriptors
WARN_EVERY = 60.0  # seconds between two warnings of the same kind (a flood must not flood the log)


class _Connection:
    __slots__ = ("sock", "deadline", "request", "reply", "waiting")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.request = bytearray()
        self.reply: memoryview | None = None  # set once the request is complete
        self.waiting = False  # complete, its reply not ready yet (out of the selector until resume)


class Server:
    """One listening socket and its connections; the master routes their events to :meth:`on_event`.

    Subclasses set ``cap``, ``timeout`` and ``max_request`` and implement
    :meth:`request_complete` and :meth:`respond`.
    """

    cap = 16  # open connections at most
    timeout = 2.0  # seconds from accept to the last byte of the reply
    max_request = 4096  # bytes; a longer request is answered from what arrived

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.selector: selectors.BaseSelector | None = None
        # insertion order is accept order, and every deadline is accept time + timeout,
        # so the first connection is always the one with the nearest deadline
        self.connections: dict[socket.socket, _Connection] = {}
        self.paused_until = 0.0  # accept rests until then (0: not paused)
        self._evicted = 0
        self._warned: dict[str, float] = {}

    # -- what a subclass decides ----------------------------------------------------

    def request_complete(self, request: bytes) -> bool:
        """True once ``request`` holds a whole request (EOF and max_request also end it)."""
        raise NotImplementedError

    def respond(self, request: bytes) -> bytes | None:
        """The whole reply to one request; runs in the loop, so it must be quick. None: not
        ready yet; the connection waits (its deadline still holds) until :meth:`resume`."""
        raise NotImplementedError

    # -- wiring into the loop ---------------------------------------------------------

    def attach(self, selector: selectors.BaseSelector) -> None:
        """Registers the listening socket; every key's data is ("serve", self)."""
        self.selector = selector
        selector.register(self.sock, selectors.EVENT_READ, ("serve", self))

    def on_event(self, fileobj: object, mask: int) -> None:
        """Handles one readiness event of the listening socket or of one connection."""
        if fileobj is self.sock:
            self._accept()
            return
        conn = self.connections.get(fileobj)  # type: ignore[call-overload]
        if conn is None:
            return  # closed earlier in this same pass (evicted, say): a stale event
        if conn.reply is None and mask & selectors.EVENT_READ:
            self._read(conn)
        elif conn.reply is not None and mask & selectors.EVENT_WRITE:
            self._write(conn)

    def expire(self, now: float) -> None:
        """Closes connections past their deadline; resumes a paused accept when its rest is over."""
        while self.connections:
            conn = next(iter(self.connections.values()))
            if conn.deadline > now:
                break
            log.debug("closing a connection that did not finish within %.1fs", self.timeout)
            self._close(conn)
        if self.paused_until and now >= self.paused_until and self.selector is not None:
            self.paused_until = 0.0
            self.selector.register(self.sock, selectors.EVENT_READ, ("serve", self))

    def next_deadline(self) -> float | None:
        """When :meth:`expire` next has something to do: the loop must wake by then."""
        times = [self.paused_until] if self.paused_until else []
        if self.connections:
            times.append(next(iter(self.connections.values())).deadline)
        return min(times) if times else None

    def close(self) -> None:
        for conn in list(self.connections.values()):
            self._close(conn)
        if self.selector is not None and not self.paused_until:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.selector.unregister(self.sock)
        with contextlib.suppress(OSError):
            self.sock.close()

    # -- the machinery ----------------------------------------------------------------

    def _accept(self) -> None:
        # bounded: a backlog of connecting clients must not keep the loop here, and accepting
        # more than cap in one go would only close the ones just accepted
        for _ in range(self.cap):
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # gone before we got to it
            except OSError as exc:
                # EMFILE, ENFILE, ENOBUFS...: the socket stays readable, so retrying now would spin
                self._pause(exc)
                return
            sock.setblocking(False)
            if len(self.connections) >= self.cap:
                self._evict()
            conn = _Connection(sock, time.monotonic() + self.timeout)
            self.connections[sock] = conn
            if self.selector is not None:
                self.selector.register(sock, selectors.EVENT_READ, ("serve", self))
            self._read(conn)  # the request usually arrives with the connection: spare a pass

    def _pause(self, exc: OSError) -> None:
        self.paused_until = time.monotonic() + ACCEPT_PAUSE
        if self.selector is not None:
            self.selector.unregister(self.sock)
        self._warn("accept", "%s: not accepting connections for %.2fs: %s",
                   self.__class__.__name__, ACCEPT_PAUSE, exc)

    def _evict(self) -> None:
        self._close(next(iter(self.connections.values())))
        self._evicted += 1
        if self._warn("cap", "%s: %d connection(s) open, the most allowed; closed %d oldest "
                      "connection(s) to serve newer ones", self.__class__.__name__, self.cap,
                      self._evicted):
            self._evicted = 0

    def _read(self, conn: _Connection) -> None:
        try:
            chunk = conn.sock.recv(self.max_request - len(conn.request))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        conn.request += chunk
        if not chunk and not conn.request:
            self._close(conn)  # connected and left without asking anything
            return
        try:  # (the request's own parsing too: a client's bytes must never take the master down)
            if chunk and len(conn.request) < self.max_request and not self.request_complete(bytes(conn.request)):
                return
            reply = self.respond(bytes(conn.request))
        except Exception:  # noqa: BLE001 - a failing reply must not take the master down with it
            log.exception("%s: cannot answer a request", self.__class__.__name__)
            self._close(conn)
            return
        if reply is None:
            conn.waiting = True  # nothing to read or write meanwhile: out of the selector
            if self.selector is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(conn.sock)
            return
        conn.reply = memoryview(reply)
        self._write(conn)

    def resume(self) -> None:
        """Asks again for the replies of the connections that wait (something they wait for
        is ready); each answered one is written, the others go on waiting."""
        for conn in [c for c in self.connections.values() if c.waiting]:
            try:
                reply = self.respond(bytes(conn.request))
            except Exception:  # noqa: BLE001 - as in _read
                log.exception("%s: cannot answer a request", self.__class__.__name__)
                self._close(conn)
                continue
            if reply is None:
                continue
            conn.waiting = False
            conn.reply = memoryview(reply)
            if self.selector is not None:
                self.selector.register(conn.sock, selectors.EVENT_WRITE, ("serve", self))
            self._write(conn)

    def _write(self, conn: _Connection) -> None:
        assert conn.reply is not None
        try:
            while conn.reply:
                sent = conn.sock.send(conn.reply)
                conn.reply = conn.reply[sent:]
        except (BlockingIOError, InterruptedError):
            if self.selector is not None:
                self.selector.modify(conn.sock, selectors.EVENT_WRITE, ("serve", self))
            return
        except OSError:
            pass  # the client left: nothing more to tell it
        self._close(conn)

    def _close(self, conn: _Connection) -> None:
        self.connections.pop(conn.sock, None)
        if self.selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(conn.sock)
        with contextlib.suppress(OSError):
            conn.sock.close()

    def _warn(self, kind: str, msg: str, *args: object) -> bool:
        now = time.monotonic()
        if now - self._warned.get(kind, -WARN_EVERY) < WARN_EVERY:
            return False
        self._warned[kind] = now
        log.warning(msg, *args)
        return True
