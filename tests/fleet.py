"""Several masters ("hosts") on one Redis and one prefix, each with its own state dir, and
jobs that write a heartbeat every 20 ms, so the overlap of two runs is measured from the runs
themselves. Shared by the partition tests."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

from harness import Governor

LEASE = 2.0

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
        g.add_app("parttasks")
        g.env["TEST_SHARED"] = str(self.shared)
        g.write(queues, lease=f"{LEASE}s", **top)
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


