"""The chaos run shared by tests/test_chaos.py (bounded) and bench/soak.py (long).

Jobs run while a killer SIGKILLs a random worker every ``kill_every`` seconds;
partway through the master itself is SIGKILLed and started again, and later
Redis (with AOF) is restarted. At the end every job must have completed.
Handlers log "start"/"done" lines with a timestamp so the run can also prove
that no job ever ran in two workers at once.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import Governor, RedisServer, wait_for


@dataclass
class ChaosResult:
    jobs: int
    seconds: float
    worker_kills: int
    ran_twice: int
    lost: list[str]
    overlaps: list[str]
    dead: int
    runs: collections.Counter = field(default_factory=collections.Counter)


def run_chaos(tmp: Path, jobs: int, kill_every: float = 0.1, concurrency: int = 4,
              timeout: float = 150.0) -> ChaosResult:
    redis = RedisServer(tmp / "redis", "--appendonly", "yes", "--appendfsync", "everysec")
    redis.start()
    (tmp / "g").mkdir()
    g = Governor(tmp / "g", redis.url)
    log = tmp / "runs.log"
    g.add_app("chaostasks")
    g.env["TEST_CHAOS_LOG"] = str(log)
    cfg = g.config({"chaos": {"concurrency": concurrency,
                              "retry": {"max": 50, "backoff": "10ms", "max_backoff": "50ms"}}})
    cfg["app"]["handlers"] = ["chaostasks:*"]
    import yaml

    g.config_path.write_text(yaml.safe_dump(cfg))
    keys = [f"k{i}" for i in range(jobs)]
    kills = 0
    stop = threading.Event()
    t0 = time.monotonic()

    def killer() -> None:
        nonlocal kills
        while not stop.wait(kill_every):
            try:
                # workers that have finished a job: killing brand-new ones would (rightly) trip
                # the crash-loop backoff, which is not what this run is about
                candidates = [w["pid"] for p in g.status()["pools"] for w in p["workers"]
                              if w["jobs_done"] > 0 and w["state"] in ("idle", "busy")]
            except (OSError, ValueError, KeyError):
                continue  # the master is being restarted
            if candidates:
                try:
                    os.kill(random.choice(candidates), signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    pass

    def done_count() -> int:
        if not log.exists():
            return 0
        return len({line.split()[1] for line in log.read_text().splitlines() if line.startswith("done")})

    try:
        g.start()
        g.client.enqueue_many("chaos", [{"handler": "chaostasks:chaos", "args": [k]} for k in keys])
        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        wait_for(lambda: done_count() >= jobs // 3, timeout / 2, "a third of the jobs", interval=0.05)
        g.proc.kill()  # the master dies at a random instant; its workers die with it
        g.wait_exit()
        g.stop()
        g.start(wait=False)  # it has work waiting: its workers will not sit idle to be counted
        wait_for(lambda: done_count() >= 2 * jobs // 3, timeout / 2, "two thirds of the jobs", interval=0.05)
        redis.stop()  # SIGTERM: Redis writes its AOF; jobs in flight wait for it to return
        time.sleep(0.5)
        redis.start()
        remaining = timeout - (time.monotonic() - t0)
        wait_for(lambda: done_count() >= jobs, max(remaining, 10), "every job", interval=0.1)
        stop.set()
        thread.join()
        wait_for(lambda: g.client.counts("chaos")["active"] == 0, 30, "the last acks")  # (a lease expiry takes 60 s)
        counts = g.client.counts("chaos")
    finally:
        stop.set()
        g.stop()
        redis.stop()
    lines = [line.split() for line in log.read_text().splitlines()]
    runs = collections.Counter(k for kind, k, _, _ in lines if kind == "done")
    return ChaosResult(jobs=jobs, seconds=time.monotonic() - t0, worker_kills=kills,
                       ran_twice=sum(1 for n in runs.values() if n > 1),
                       lost=[k for k in keys if k not in runs], overlaps=_overlaps(lines),
                       dead=counts["dead"], runs=runs)


def _overlaps(lines: list[list[str]]) -> list[str]:
    """Jobs with a finished run whose end came after another run of the same job started.
    (A killed run logs no "done"; the master requeues its job only after reaping the worker,
    so it cannot overlap a later run. That is what the lease fence and requeue order give.)"""
    per_key: dict[str, list[tuple[float, str, str]]] = collections.defaultdict(list)
    for kind, key, pid, t in lines:
        per_key[key].append((float(t), kind, pid))
    bad = []
    for key, events in per_key.items():
        events.sort()
        starts = [(t, pid) for t, kind, pid in events if kind == "start"]
        dones = {pid: t for t, kind, pid in events if kind == "done"}
        for i, (_, pid) in enumerate(starts):
            end = dones.get(pid)
            if end is not None and any(t2 < end for t2, p2 in starts[i + 1:] if p2 != pid):
                bad.append(key)
                break
    return bad
