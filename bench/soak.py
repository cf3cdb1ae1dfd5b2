"""The chaos run for minutes rather than seconds, for soaking before a release.

    .venv/bin/python bench/soak.py [--jobs 50000] [--kill-every 0.1] [--concurrency 8]

The same run as tests/test_chaos.py (worker SIGKILLs, a master SIGKILL and
restart, a Redis restart with AOF), on more jobs, printing a table. Exits
non-zero if a job was lost, ran in two workers at once, or was dead-lettered.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from chaos import run_chaos  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=50_000)
    ap.add_argument("--kill-every", type=float, default=0.1)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="governor-soak-") as tmp:
        r = run_chaos(Path(tmp), args.jobs, args.kill_every, args.concurrency, timeout=3600)
    rows = [("jobs", f"{r.jobs:,}"), ("seconds", f"{r.seconds:.1f}"), ("worker SIGKILLs", f"{r.worker_kills:,}"),
            ("master SIGKILL + restart", "1"), ("Redis restarts (AOF)", "1"),
            ("lost", str(len(r.lost))), ("ran twice (at least once, never concurrently)", str(r.ran_twice)),
            ("ran concurrently in two workers", str(len(r.overlaps))), ("dead-lettered", str(r.dead))]
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k.ljust(w)}  {v:>10}")
    return 1 if r.lost or r.overlaps or r.dead else 0


if __name__ == "__main__":
    sys.exit(main())
