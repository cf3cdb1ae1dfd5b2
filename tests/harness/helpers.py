"""Small helpers more than one test file needs: free ports, waiting, the CLI, one raw reserve."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from governor import Client
from governor.protocol.queue import Reserved, run


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now (the kernel's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """The first truthy value of ``predicate()``, polled every ``interval`` s; an AssertionError
    naming ``what`` after ``timeout`` s (tests wait on real processes, never sleep blind)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def http_get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    """(status, body) of a GET, error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def cli(*args: str, cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """``python -m governor ARGS`` as a user runs it: output captured as text, 30 s at most."""
    return subprocess.run([sys.executable, "-m", "governor", *args], capture_output=True, text=True,
                          timeout=30, cwd=cwd)


def reserve(client: Client, queue: str, worker: str = "w1", token: str = "t1",
            lease_ms: int = 60_000) -> Reserved | None:
    """One raw reserve, as a worker's loop does it (no worker process): the job, or None."""
    reply = run(client.redis, client.keys(queue).reserve(worker, token, lease_ms))[0]
    return Reserved.from_reply(reply, token) if reply[0] == 1 else None


def dead_lettered(client: Client, job: str, timeout: float = 30, interval: float = 0.05) -> dict:
    """The record of ``job`` once it is dead-lettered."""
    return wait_for(lambda: (r := client.job(job)) and r["state"] == "dead" and r, timeout,
                    f"job {job} to be dead-lettered", interval=interval)
