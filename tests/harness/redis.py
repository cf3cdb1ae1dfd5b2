"""Real redis-servers for the tests: a plain one (per session, or a test's own to stop and
restart) and a Sentinel watching one. Real binaries on free loopback ports, stopped by pid."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import redis

from harness.helpers import free_port, wait_for


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
