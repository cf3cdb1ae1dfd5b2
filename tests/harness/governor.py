"""The `Governor` harness: one real `governor run` subprocess per test, with its own YAML, prefix,
state dir and records directory, and the handler modules of tests/apps/ copied beside its config.

Handler modules are copied, not imported from tests/apps/ in place: a test's directory is all a
master (and a worker running as ``nobody``, which cannot traverse /root) needs to read. The modules
find the records directory in ``TEST_RECORDS``, which the harness puts in the master's
environment (workers inherit it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psutil
import yaml

from governor import Client
from governor.ops import control

from harness.helpers import wait_for

APPS = Path(__file__).resolve().parent.parent / "apps"


def copy_app(directory: Path, app: str, as_name: str | None = None) -> Path:
    """tests/apps/APP.py written to DIRECTORY/AS_NAME.py (default: APP.py): a fresh file (new
    mtime), so a module replaced under the same name is not taken from a stale bytecode cache."""
    path = directory / f"{as_name or app}.py"
    path.write_text((APPS / f"{app}.py").read_text())
    return path


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
        copy_app(tmp_path, "tasks")
        self.handlers = ["tasks:*"]  # what config() names in app.handlers (add_app adds)
        # the environment the master (and its workers) get: where the apps write their records
        self.env: dict[str, str] = {"TEST_RECORDS": str(self.records)}
        self.proc: subprocess.Popen | None = None
        self.client = Client.from_url(redis_url, prefix=self.prefix)

    def config(self, queues: dict[str, Any], **top: Any) -> dict[str, Any]:
        return {
            "redis": {"url": self.redis_url, "prefix": self.prefix},
            "app": {"path": ["."], "handlers": list(self.handlers)},
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
        env = self.environment(env)
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

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The master's environment: ours, unbuffered output, ``self.env``, then ``extra``."""
        return dict(os.environ, PYTHONUNBUFFERED="1", **{**self.env, **(extra or {})})

    def add_app(self, app: str, as_name: str | None = None) -> Path:
        """Copies tests/apps/APP.py beside the config (as AS_NAME.py) and adds its handlers to
        the ones config() names (``app`` given to config() replaces them all); returns its path."""
        pattern = f"{as_name or app}:*"
        if pattern not in self.handlers:
            self.handlers.append(pattern)
        return copy_app(self.dir, app, as_name)

    def launch(self, argv: list[str], **popen_kwargs: Any) -> subprocess.Popen:
        """How the master process is started (a namespaced master overrides it)."""
        return subprocess.Popen(argv, **popen_kwargs)

    def status(self) -> dict[str, Any]:
        return control.request(str(self.state_dir), "status")

    def backoff(self, queue: str) -> dict | None:
        """The pool's crash-loop backoff as status shows it (None: none, or not listening yet)."""
        try:
            pools = {p["queue"]: p for p in self.status()["pools"]}
        except OSError:
            return None
        return pools[queue]["backoff"] if queue in pools else None

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
