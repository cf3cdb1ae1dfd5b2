"""Fixtures: a private redis-server per session, and a real `governor run` per test.

Nothing here is mocked. The Redis server is the real binary on a free
loopback port; the master is the real CLI in a subprocess, driven with real
signals; handlers are a module written to the test's temp directory, and they
record what ran in files the test reads back.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
import yaml

from governor import Client
from governor.ops import control


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server child on 127.0.0.1 that a test may stop and start again."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.extra = extra
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if not binary:
            pytest.fail("redis-server is not installed (apt-get install -y redis-server)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, host="127.0.0.1")
        wait_for(lambda: _pings(client), 10, "redis-server to answer")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.AuthenticationError:
        return True  # up, and asking for a password
    except redis.ConnectionError:
        return False
    except redis.ResponseError as exc:
        return "NOAUTH" in str(exc)


def http_get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    """(status, body) of a GET, error statuses included."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Sentinel:
    """A real redis-server in Sentinel mode on 127.0.0.1 watching ``master`` as 'mymaster'; started
    and ready (it knows the master) on construction. ``auth_pass``: the master's password."""

    def __init__(self, workdir: Path, master: RedisServer, auth_pass: str | None = None) -> None:
        self.port = free_port()
        conf = workdir / "sentinel.conf"
        conf.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {workdir}\n"
                        f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n"
                        + (f"sentinel auth-pass mymaster {auth_pass}\n" if auth_pass else ""))
        self.proc = subprocess.Popen(["redis-server", str(conf), "--sentinel"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        probe = redis.Redis(port=self.port)
        wait_for(lambda: self._knows_master(probe), 10, "the sentinel to know the master")

    @staticmethod
    def _knows_master(probe: redis.Redis) -> bool:
        try:
            return bool(probe.execute_command("SENTINEL", "get-master-addr-by-name", "mymaster"))
        except redis.RedisError:
            return False  # starting up

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def client(redis_server: RedisServer) -> Client:
    """A Client under a prefix of its own, so tests never see each other's keys."""
    return Client.from_url(redis_server.url, prefix=f"t{uuid.uuid4().hex[:10]}")


TASKS = '''
import os, time

RECORDS = {records!r}


def _record(kind, key):
    with open(os.path.join(RECORDS, kind), "a") as fh:
        fh.write(f"{{key}} {{os.getpid()}}\\n")


def record(key):
    _record("done", key)


def sleep_then_record(key, seconds):
    _record("start", key)
    time.sleep(seconds)
    _record("done", key)


def fail(key):
    raise ValueError(f"boom {{key}}")


def _rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def hog(key, mb, limit_mb=None, hold=0.0):
    """Allocates and touches mb MiB in 10 MiB steps; notes when its RSS crosses limit_mb."""
    chunks, crossed = [], False
    _record("start", key)
    for _ in range(mb // 10):
        chunks.append(b"x" * (10 * 1024 * 1024))
        if limit_mb and not crossed and _rss() > limit_mb * 1024 * 1024:
            crossed = True
            _record("crossed", repr(time.time()))
        time.sleep(0.005)
    time.sleep(hold)
    _record("done", key)
    return len(chunks)


def hog_in_child(key, mb):
    import subprocess, sys
    child = subprocess.Popen([sys.executable, "-c",
                              f"import time; x = [b'x' * (10 << 20) for _ in range({{mb // 10}})]; time.sleep(60)"])
    _record("grandchild", str(child.pid))
    child.wait()
    _record("done", key)


def catch_soft_timeout(key, sleep):
    from governor import SoftTimeLimitExceeded
    _record("start", key)
    try:
        time.sleep(sleep)
    except SoftTimeLimitExceeded:
        _record("soft", key)
        time.sleep(sleep)  # cleanup that overruns: the hard limit must still apply
    _record("done", key)


def blocked_in_c(key, sleep):
    import signal, threading
    signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGALRM, signal.SIGTERM, signal.SIGINT}})
    _record("start", key)
    t = threading.Thread(target=time.sleep, args=(sleep,))
    t.start()
    t.join()  # in C, with every catchable signal blocked
    _record("done", key)


def pid(key):
    _record("done", key)


def segfault(key):
    import ctypes
    _record("start", key)
    ctypes.string_at(0)


def allocate(key, mb):
    try:
        block = b"x" * (mb << 20)
    except MemoryError:
        _record("memoryerror", key)
        raise
    _record("done", key)
    return len(block)
'''


class Governor:
    """One `governor run` subprocess with its own YAML, handler module and prefix."""

    def __init__(self, tmp_path: Path, redis_url: str) -> None:
        self.dir = tmp_path
        self.redis_url = redis_url
        self.prefix = f"t{uuid.uuid4().hex[:10]}"
        self.records = tmp_path / "records"
        self.records.mkdir()
        self.config_path = tmp_path / "governor.yaml"
        self.log_path = tmp_path / "governor.log"
        self.state_dir = tmp_path / "state"
        (tmp_path / "tasks.py").write_text(textwrap.dedent(TASKS.format(records=str(self.records))))
        self.proc: subprocess.Popen | None = None
        self.client = Client.from_url(redis_url, prefix=self.prefix)

    def config(self, queues: dict[str, Any], **top: Any) -> dict[str, Any]:
        return {
            "redis": {"url": self.redis_url, "prefix": self.prefix},
            "app": {"path": ["."], "handlers": ["tasks:*"]},
            "state_dir": str(self.state_dir),
            "shutdown_timeout": "10s",
            "defaults": {"retry": {"max": 2, "backoff": "10ms", "max_backoff": "50ms"}},
            "queues": queues,
            **top,
        }

    def write(self, queues: dict[str, Any], **top: Any) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config(queues, **top)))

    def start(self, queues: dict[str, Any] | None = None, env: dict[str, str] | None = None,
              wait: bool = True, **top: Any) -> Governor:
        if queues is not None:
            self.write(queues, **top)
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self._log = open(self.log_path, "ab")
        self.proc = self.launch([sys.executable, "-m", "governor", "run", "-c", str(self.config_path)],
                                stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=self.dir)
        if not wait:
            return self
        cfg = yaml.safe_load(self.config_path.read_text())
        for name, q in cfg["queues"].items():
            n = q["concurrency"] if isinstance(q, dict) else q
            n = n["min"] if isinstance(n, dict) else n  # an elastic pool starts at its min
            self.wait_workers(name, n, states=("idle",))
        return self

    def launch(self, argv: list[str], **popen_kwargs: Any) -> subprocess.Popen:
        """How the master process is started (a namespaced master overrides it)."""
        return subprocess.Popen(argv, **popen_kwargs)

    def status(self) -> dict[str, Any]:
        return control.request(str(self.state_dir), "status")

    def workers(self, queue: str, states: tuple[str, ...] = ("starting", "idle", "busy")) -> list[dict]:
        try:
            st = self.status()
        except OSError:
            return []
        for pool in st["pools"]:
            if pool["queue"] == queue:
                return [w for w in pool["workers"] if w["state"] in states]
        return []

    def wait_workers(self, queue: str, n: int, timeout: float = 10, states: tuple[str, ...] = ("starting", "idle", "busy")) -> list[dict]:
        def ready() -> list[dict] | None:
            self.assert_running()
            ws = self.workers(queue, states)
            return ws if len(ws) == n else None

        if n == 0:
            wait_for(lambda: self.workers(queue, states) == [], timeout, f"{queue} to have no workers")
            return []
        return wait_for(ready, timeout, f"{n} {'/'.join(states)} worker(s) in {queue}")

    def children(self) -> list[psutil.Process]:
        """The master's real child processes, from the process table."""
        alive = []
        for c in psutil.Process(self.proc.pid).children():
            try:
                cmd = " ".join(c.cmdline())  # not its Redis, nor its sentry (governor/supervise/proctree.py)
                if c.status() != psutil.STATUS_ZOMBIE and "redis-server" not in cmd and "proctree.py" not in cmd:
                    alive.append(c)
            except psutil.NoSuchProcess:
                pass  # exited while we looked
        return alive

    def assert_running(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"master exited with {self.proc.returncode}:\n{self.log()}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 20) -> int:
        return self.proc.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def pairs(self, kind: str) -> list[tuple[str, int]]:
        """(key, pid) for every record of this kind, in order."""
        path = self.records / kind
        if not path.exists():
            return []
        return [(k, int(p)) for k, p in (line.split() for line in path.read_text().splitlines())]

    def lines(self, kind: str) -> list[str]:
        path = self.records / kind
        return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self._log.close()


@pytest.fixture
def governor(tmp_path: Path, redis_server: RedisServer) -> Iterator[Governor]:
    g = Governor(tmp_path, redis_server.url)
    yield g
    g.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own (AOF on), for tests that stop, restart or reconfigure it."""
    server = RedisServer(tmp_path / "redis", "--appendonly", "yes", "--appendfsync", "always")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_governor(tmp_path: Path, private_redis: RedisServer) -> Iterator[Governor]:
    """A Governor (not yet started) on the test's own redis-server."""
    (tmp_path / "g").mkdir()
    g = Governor(tmp_path / "g", private_redis.url)
    yield g
    g.stop()
