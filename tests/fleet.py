"""Several masters ("hosts") on one Redis and one prefix, each with its own state dir, and
jobs that write a heartbeat every 20 ms, so the overlap of two runs is measured from the runs
themselves. Shared by the partition tests."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import yaml

from conftest import Governor

LEASE = 2.0

PARTTASKS = '''
import json, os, time
import governor

SHARED = __SHARED__


def heartbeat(key, seconds):
    """Beats every 20 ms for `seconds` of its own running time, then records that it finished."""
    job = governor.current_job()
    path = os.path.join(SHARED, "beats")
    with open(os.path.join(SHARED, "fences"), "a") as fh:
        fh.write(f"{key} {job.attempt} {job.fencing_token} {os.getpid()}\\n")
    ran, last = 0.0, time.monotonic()
    while ran < seconds:
        with open(path, "a") as fh:
            fh.write(f"{key} {os.getpid()} {time.time():.4f}\\n")
        time.sleep(0.02)
        now = time.monotonic()
        ran += min(now - last, 0.1)  # time spent frozen does not count as running
        last = now
    with open(os.path.join(SHARED, "done"), "a") as fh:
        fh.write(f"{key} {os.getpid()}\\n")


def stamp(key):
    """Records when it started, on this host's clock (the one Redis uses too)."""
    with open(os.path.join(SHARED, "starts"), "a") as fh:
        fh.write(f"{key} {os.getpid()} {time.time():.6f}\\n")


def span(key, seconds):
    """Records its start and end, so overlapping runs can be counted."""
    with open(os.path.join(SHARED, "spans"), "a") as fh:
        fh.write(f"start {key} {os.getpid()} {time.time():.6f}\\n")
    time.sleep(seconds)
    with open(os.path.join(SHARED, "spans"), "a") as fh:
        fh.write(f"end {key} {os.getpid()} {time.time():.6f}\\n")


def limited(key):
    """Takes a start from the 'api' limiter first (raising RateLimited when there is none)."""
    governor.limit("api")
    with open(os.path.join(SHARED, "calls"), "a") as fh:
        fh.write(f"{key} {os.getpid()} {time.time():.6f}\\n")


def ordered(key, seq, seconds=0.0):
    """Records its start and end per ordering key, so per-key order can be checked."""
    with open(os.path.join(SHARED, "order"), "a") as fh:
        fh.write(f"start {key} {seq} {os.getpid()} {time.time():.6f}\\n")
    time.sleep(seconds)
    with open(os.path.join(SHARED, "order"), "a") as fh:
        fh.write(f"end {key} {seq} {os.getpid()} {time.time():.6f}\\n")


def fence(key, seconds):
    job = governor.current_job()
    with open(os.path.join(SHARED, "fences"), "a") as fh:
        fh.write(f"{key} {job.attempt} {job.fencing_token} {os.getpid()}\\n")
    time.sleep(seconds)
'''


class Fleet:
    """Masters on one Redis and one prefix, each with its own state dir; records shared."""

    def __init__(self, tmp_path: Path, redis_url: str) -> None:
        self.shared = tmp_path / "shared"
        self.shared.mkdir()
        self.tmp = tmp_path
        self.redis_url = redis_url
        self.masters: list[Governor] = []
        self.prefix = None

    def master(self, name: str, queues: dict, make: Callable[[Path], Governor] | None = None,
               **top) -> Governor:
        """A master (not started) named ``name``; ``make(dir)`` builds it (default: a plain
        Governor on ``redis_url``; a test passes a namespaced one)."""
        d = self.tmp / name
        d.mkdir()
        g = make(d) if make else Governor(d, self.redis_url)
        if self.prefix is None:
            self.prefix = g.prefix
        g.prefix, g.client = self.prefix, type(g.client).from_url(self.redis_url, prefix=self.prefix)
        (d / "parttasks.py").write_text(PARTTASKS.replace("__SHARED__", repr(str(self.shared))))
        cfg = g.config(queues, lease=f"{LEASE}s", **top)
        cfg["app"]["handlers"] = ["tasks:*", "parttasks:*"]
        g.config_path.write_text(yaml.safe_dump(cfg))
        self.masters.append(g)
        return g

    def lines(self, kind: str) -> list[list[str]]:
        path = self.shared / kind
        return [ln.split() for ln in path.read_text().splitlines()] if path.exists() else []

    def runs(self) -> dict[int, tuple[float, float]]:
        """pid -> (first beat, last beat) of every run seen."""
        spans: dict[int, tuple[float, float]] = {}
        for _, pid, t in self.lines("beats"):
            first, last = spans.get(int(pid), (float(t), float(t)))
            spans[int(pid)] = (min(first, float(t)), max(last, float(t)))
        return spans

    def stop(self) -> None:
        for g in self.masters:
            if g.proc and g.proc.poll() is None:
                try:
                    os.kill(g.proc.pid, signal.SIGCONT)
                except OSError:
                    pass
            g.stop()



def _no_overlap(spans: dict[int, tuple[float, float]]) -> list[tuple[float, float]]:
    ordered = sorted(spans.values())
    for (_, a1), (b0, _) in zip(ordered, ordered[1:], strict=False):
        assert a1 < b0, f"two runs overlapped by {a1 - b0:.3f}s: {ordered}"
    return ordered


