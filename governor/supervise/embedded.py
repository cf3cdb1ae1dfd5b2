"""``redis: {url: embedded}``: a private redis-server the master starts and keeps alive.

For a first run and for single-host installs that have no Redis of their own.
It listens only on a unix socket (mode 0700) in the state directory, keeps an
append-only file there so a restart loses no queued job, and is put in its own
session so a Ctrl-C at the terminal reaches the master, not Redis.

Runs in: master.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time

import redis

from governor.protocol.connection import EMBEDDED_SOCKET
from governor.supervise import statedir

log = logging.getLogger("governor.embedded")

def _die_with_parent() -> None:
    """In the child before exec: SIGTERM (a clean AOF flush) when the master dies, however it dies."""
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


INSTALL_HINT = ("redis-server was not found on PATH; install it with "
                "'sudo apt-get install -y redis-server' (Debian/Ubuntu), "
                "'sudo dnf install -y redis' (Fedora) or 'brew install redis' (macOS)")


class EmbeddedRedis:
    def __init__(self, state_dir: str, data_dir: str | None = None) -> None:
        self.state_dir = state_dir
        self.data_dir = data_dir or state_dir
        self.socket = os.path.join(state_dir, EMBEDDED_SOCKET)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return "unix://" + self.socket

    def start(self, timeout: float = 10.0) -> None:
        binary = shutil.which("redis-server")
        if not binary:
            raise RuntimeError(INSTALL_HINT)
        # redis-server creates its socket, log and append-only file by name, following
        # symlinks: safe only in directories nobody else can write in (see governor.supervise.statedir)
        statedir.prepare(self.state_dir, "state_dir")
        statedir.prepare(self.data_dir, "data_dir")
        if os.path.exists(self.socket):
            self._shutdown_leftover()
        self.proc = subprocess.Popen(
            [binary, "--port", "0", "--unixsocket", self.socket, "--unixsocketperm", "700",
             "--dir", self.data_dir, "--appendonly", "yes", "--appendfsync", "everysec",
             "--save", "", "--logfile", os.path.join(self.data_dir, "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        client = redis.Redis(unix_socket_path=self.socket, socket_timeout=1)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"embedded redis-server exited with {self.proc.returncode}; "
                                   f"see {os.path.join(self.data_dir, 'redis.log')}")
            try:
                if client.ping():
                    break
            except (redis.ConnectionError, redis.BusyLoadingError, FileNotFoundError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("embedded redis-server did not answer within "
                                   f"{timeout:.0f}s; see {self.data_dir}/redis.log")
            time.sleep(0.02)
        client.close()
        log.info("embedded redis-server running, pid %d, socket %s", self.proc.pid, self.socket)

    def _shutdown_leftover(self) -> None:
        """A socket left behind: either a dead server's, or a live one whose master was killed
        before it could stop it. Never run two servers on one append-only file."""
        try:
            leftover = redis.Redis(unix_socket_path=self.socket, socket_timeout=5)
            leftover.shutdown(save=False)  # with AOF on, SHUTDOWN flushes it first
            log.warning("stopped an embedded redis-server left running by a previous master")
        except redis.ConnectionError:
            pass  # nobody there (or it just exited, which is what we asked)
        except (redis.ResponseError, OSError) as exc:
            raise RuntimeError(f"an embedded redis-server on {self.socket} would not stop: {exc}") from None
        if os.path.exists(self.socket):
            os.unlink(self.socket)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
