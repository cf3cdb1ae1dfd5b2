"""governor's performance figures, in one command on a private redis-server.

    .venv/bin/python bench/run.py [--jobs 20000] [--repeat 3]

No-op jobs (the body does one Redis INCR), 2 worker processes. Prints:
enqueue rate one call at a time and in bulk, drain throughput, CPU per job
(master + workers + redis-server), pickup latency on idle workers, Redis
commands per second at idle, the master's CPU with 16 and 64 idle workers,
hard-timeout overshoot over --kills kills, and how soon after crossing
memory.hard a worker is killed.
The budget these are held to is in shared/design.md ("Performance budget").
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil
import redis
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from governor import Client, control  # noqa: E402

TASKS = '''
import os, time, redis

_conn = None


def _redis():
    global _conn
    if _conn is None:
        _conn = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    return _conn


def sleep(seconds):
    time.sleep(seconds)


def hog(mb, limit_mb):
    """Allocates past limit_mb, recording the moment its RSS crossed it."""
    chunks, crossed = [], False
    for _ in range(mb // 10):
        chunks.append(b"x" * (10 << 20))
        if not crossed:
            with open("/proc/self/statm") as fh:
                if int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") > limit_mb << 20:
                    crossed = True
                    _redis().rpush("bench:crossed", time.time())
        time.sleep(0.005)
    time.sleep(30)


def incr():
    _redis().incr("bench:counter")


def stamp():
    _redis().rpush("bench:starts", time.time())


def pickup(enqueued_at):
    _redis().rpush("bench:pickup", time.time() - enqueued_at)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout: float, what: str, interval: float = 0.01):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(interval)


class Setup:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.redis_proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.redis = redis.Redis.from_url(self.url)
        wait_for(self._ping, 10, "redis-server")
        (workdir / "bench_tasks.py").write_text(textwrap.dedent(TASKS))
        self.master: subprocess.Popen | None = None

    def _ping(self) -> bool:
        try:
            return self.redis.ping()
        except redis.ConnectionError:
            return False

    def start_master(self, prefix: str, concurrency: int, **queue: object) -> None:
        cfg = {"redis": {"url": self.url, "prefix": prefix},
               "app": {"path": ["."], "preload": ["bench_tasks"], "handlers": ["bench_tasks:*"]},
               "state_dir": str(self.workdir / "state"), "log": {"level": "warning"},
               "queues": {"bench": {"concurrency": concurrency, **queue}}}
        path = self.workdir / "governor.yaml"
        path.write_text(yaml.safe_dump(cfg))
        env = dict(os.environ, BENCH_REDIS_URL=self.url)
        self.master = subprocess.Popen([sys.executable, "-m", "governor", "run", "-c", str(path)], env=env,
                                       cwd=self.workdir)

        def ready():
            try:
                st = control.request(str(self.workdir / "state"), "status")
            except OSError:
                return False
            return sum(1 for w in st["pools"][0]["workers"] if w["state"] == "idle") == concurrency

        wait_for(ready, 60, "workers to be idle")

    def stop_master(self) -> None:
        if self.master and self.master.poll() is None:
            self.master.send_signal(signal.SIGINT)  # fast stop: no need to wait for sleeping jobs
            self.master.wait(30)

    def processes(self) -> list[psutil.Process]:
        m = psutil.Process(self.master.pid)
        return [m, *m.children(), psutil.Process(self.redis_proc.pid)]

    def close(self) -> None:
        self.stop_master()
        self.redis_proc.terminate()
        self.redis_proc.wait(10)


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def bench_enqueue(s: Setup, n_single: int, n_bulk: int) -> tuple[float, float]:
    c = Client.from_url(s.url, prefix="enq")
    c.enqueue("q", "bench_tasks:incr")  # warm the script cache and queue registry
    t0 = time.perf_counter()
    for _ in range(n_single):
        c.enqueue("q", "bench_tasks:incr")
    single = n_single / (time.perf_counter() - t0)
    specs = [{"handler": "bench_tasks:incr"} for _ in range(n_bulk)]
    t0 = time.perf_counter()
    for i in range(0, n_bulk, 10_000):
        c.enqueue_many("q", specs[i:i + 10_000])
    bulk = n_bulk / (time.perf_counter() - t0)
    s.redis.flushall()
    return single, bulk


def bench_drain(s: Setup, n: int, prefix: str, **queue: object) -> tuple[float, float]:
    # no recycling here: a recycled worker's CPU would leave the accounting with it
    s.start_master(prefix, 2, recycle={"max_jobs": "off"}, **queue)
    c = Client.from_url(s.url, prefix=prefix)
    procs = s.processes()
    cpu0 = cpu_seconds(procs)
    t0 = time.perf_counter()
    c.enqueue_many("bench", [{"handler": "bench_tasks:incr"} for _ in range(n)])
    wait_for(lambda: c.counts("bench")["done_total"] >= n, 300, "the drain", interval=0.005)
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds(procs) - cpu0
    s.stop_master()
    assert int(s.redis.get("bench:counter")) >= n
    s.redis.flushall()
    return n / elapsed, cpu / n * 1000


def bench_rate_limit(s: Setup, algorithm: str, limit: int = 50, n: int = 300) -> tuple[int, float]:
    """(most starts in any window of `per` (aligned windows for fixed_window), sustained starts/s
    once the first window's burst is spent) for `limit`/s with 4 workers and a backlog."""
    prefix = f"rl{algorithm}"
    s.start_master(prefix, 4, rate_limit={"limit": limit, "per": "1s", "algorithm": algorithm})
    c = Client.from_url(s.url, prefix=prefix)
    ids = c.enqueue_many("bench", [{"handler": "bench_tasks:stamp"} for _ in range(n)])
    wait_for(lambda: s.redis.llen("bench:starts") >= n, 60, "the throttled backlog", interval=0.05)
    # a start is the reservation, on Redis's clock (what the limit counts); the handler's own
    # time.time() adds however long its worker waited for a CPU after the reply
    starts = sorted(c.job(i, "bench")["started_at"] for i in ids)
    s.stop_master()
    s.redis.flushall()
    if algorithm == "fixed_window":  # per aligned window; the rate over the whole windows after the first
        per_window: dict[int, int] = {}
        for t in starts:
            per_window[int(t)] = per_window.get(int(t), 0) + 1
        first, last = min(per_window), max(per_window)
        return max(per_window.values()), (n - per_window[first]) / max(last - first, 1)
    worst = max(sum(1 for u in starts[i:] if u - t < 1.0) for i, t in enumerate(starts))
    if algorithm == "sliding_window":  # bursts of `limit` once per window: the rate after the first
        return worst, (n - limit) / (starts[-1] - starts[limit - 1])
    return worst, (n - 1) / (starts[-1] - starts[0])


def bench_pickup(s: Setup, samples: int, prefix: str) -> tuple[list[float], float]:
    s.start_master(prefix, 2)
    c = Client.from_url(s.url, prefix=prefix)
    c.enqueue("bench", "bench_tasks:pickup", time.time())  # warm up
    wait_for(lambda: s.redis.llen("bench:pickup") == 1, 10, "warm-up job")
    s.redis.delete("bench:pickup")
    for _ in range(samples):
        time.sleep(0.02)  # both workers are idle and blocked in Redis again
        c.enqueue("bench", "bench_tasks:pickup", time.time())
    wait_for(lambda: s.redis.llen("bench:pickup") == samples, 30, "pickup samples")
    lat = sorted(float(x) * 1000 for x in s.redis.lrange("bench:pickup", 0, -1))
    # idle Redis traffic: commands processed (those run inside scripts included) in 30 s with
    # nothing queued, minus our own INFO call; 30 s spans several of the master's idle passes
    time.sleep(1)
    before = s.redis.info("stats")["total_commands_processed"]
    time.sleep(30)
    after = s.redis.info("stats")["total_commands_processed"]
    s.stop_master()
    s.redis.flushall()
    return lat, (after - before - 1) / 30


def bench_master_idle(s: Setup, prefix: str, workers: int, seconds: float = 30, busy: bool = False) -> float:
    """The master's CPU with idle workers (sampled every 5 s), or with every worker busy in a
    sleeping job (sampled every memory.interval, 0.5 s). CPU time is counted in 10 ms ticks,
    so the window is long enough to resolve 0.05 %."""
    s.start_master(prefix, workers, timeout={"soft": "off", "hard": "off"})
    m = psutil.Process(s.master.pid)
    if busy:
        Client.from_url(s.url, prefix=prefix).enqueue_many(
            "bench", [{"handler": "bench_tasks:sleep", "args": [seconds + 30]} for _ in range(workers)])
    time.sleep(2)
    t = m.cpu_times()
    c0 = t.user + t.system
    time.sleep(seconds)
    t = m.cpu_times()
    s.stop_master()
    return (t.user + t.system - c0) / seconds * 100


def bench_timeout_overshoot(s: Setup, kills: int) -> list[float]:
    """Hard-timeout overshoot: how long past its deadline a stuck job's worker was reaped."""
    s.start_master("to", 4, timeout={"soft": "off", "hard": "200ms"}, retry={"max": 0})
    c = Client.from_url(s.url, prefix="to")
    ids = c.enqueue_many("bench", [{"handler": "bench_tasks:sleep", "args": [30]} for _ in range(kills)])
    wait_for(lambda: c.counts("bench")["dead"] >= kills, 120, "the timeout kills", interval=0.1)
    s.stop_master()
    over = sorted((c.job(i, "bench")["errors"][0]["seconds"] - 0.2) * 1000 for i in ids)
    s.redis.flushall()
    return over


def bench_memory_reaction(s: Setup, samples: int, interval: str) -> list[float]:
    """Time from a worker's RSS crossing memory.hard to its job being settled as killed."""
    s.start_master("mem", 1, memory={"soft": "off", "hard": "150MiB", "interval": interval}, retry={"max": 0})
    c = Client.from_url(s.url, prefix="mem")
    out = []
    for _ in range(samples):
        job = c.enqueue("bench", "bench_tasks:hog", 400, 150)
        wait_for(lambda j=job: c.job(j, "bench")["state"] == "dead", 30, "the memory kill", interval=0.02)
        crossed = float(s.redis.lpop("bench:crossed"))
        out.append((c.job(job, "bench")["errors"][0]["at"] / 1000 - crossed) * 1000)
    s.stop_master()
    s.redis.flushall()
    return sorted(out)


def pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pickups", type=int, default=300)
    ap.add_argument("--kills", type=int, default=100)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="governor-bench-") as tmp:
        s = Setup(Path(tmp))
        try:
            singles, bulks, drains, cpus, limited, limited_cpus = [], [], [], [], [], []
            for r in range(args.repeat):
                single, bulk = bench_enqueue(s, 5000, 100_000)
                singles.append(single)
                bulks.append(bulk)
                rate, cpu = bench_drain(s, args.jobs, f"d{r}")
                drains.append(rate)
                cpus.append(cpu)
                # the same drain with fleet-wide limits configured that never bind: their cost
                rate, cpu = bench_drain(s, args.jobs, f"l{r}", global_concurrency=100,
                                        rate_limit={"limit": 1_000_000, "per": "1s"})
                limited.append(rate)
                limited_cpus.append(cpu)
            accuracy = {a: bench_rate_limit(s, a) for a in ("token_bucket", "sliding_window", "fixed_window")}
            lat, idle_cmds = bench_pickup(s, args.pickups, "p")
            master_idle = bench_master_idle(s, "m", 16)
            master_busy_64 = bench_master_idle(s, "m64", 64, seconds=20, busy=True)
            overshoot = bench_timeout_overshoot(s, args.kills)
            reaction = bench_memory_reaction(s, 10, "500ms")
            reaction_fast = bench_memory_reaction(s, 10, "100ms")
        finally:
            s.close()
    med = statistics.median
    rows = [
        ("enqueue, one call at a time", f"{med(singles):,.0f} jobs/s", ">= 6,316 (2x huey)"),
        ("enqueue, bulk (enqueue_many)", f"{med(bulks):,.0f} jobs/s", "> 50,000"),
        (f"drain, {args.jobs:,} no-op jobs, 2 workers", f"{med(drains):,.0f} jobs/s", ">= 3,186 (2x huey)"),
        ("CPU per job (master+workers+redis)", f"{med(cpus):.3f} ms", "<= 0.3 ms"),
        ("drain with a rate limit + global_concurrency (not binding)", f"{med(limited):,.0f} jobs/s",
         "within noise of the drain"),
        ("CPU per job, same", f"{med(limited_cpus):.3f} ms", ""),
        *((f"{a} 50/s, 4 workers: most starts (Redis time) in 1s, sustained rate", f"{w} / {r:.1f}/s",
           "<= 50 / >= 47.5")
          for a, (w, r) in accuracy.items()),
        ("pickup latency p50 (idle workers)", f"{pct(lat, 50):.2f} ms", "< 1 ms"),
        ("pickup latency p95", f"{pct(lat, 95):.2f} ms", ""),
        ("pickup latency p99", f"{pct(lat, 99):.2f} ms", "< 5 ms"),
        ("Redis commands/s at idle (2 workers)", f"{idle_cmds:.2f}", "< 2"),
        ("master CPU, 16 idle workers", f"{master_idle:.3f} % of a core", "< 0.1 %"),
        ("master CPU, 64 busy workers sampled every 0.5s", f"{master_busy_64:.3f} % of a core", "< 1 %"),
        (f"hard-timeout overshoot p50 ({len(overshoot)} kills)", f"{pct(overshoot, 50):.1f} ms", ""),
        ("hard-timeout overshoot p99", f"{pct(overshoot, 99):.1f} ms", "< 100 ms"),
        ("hard-timeout overshoot max", f"{overshoot[-1]:.1f} ms", "< 100 ms"),
        ("memory.hard kill after crossing, 0.5s samples, p50", f"{pct(reaction, 50):.0f} ms", "<= 2 samples"),
        ("memory.hard kill after crossing, 0.5s samples, max", f"{reaction[-1]:.0f} ms", "<= 1,000 ms"),
        ("memory.hard kill after crossing, 0.1s samples, max", f"{reaction_fast[-1]:.0f} ms", "<= 200 ms"),
    ]
    print(f"\ngovernor bench: median of {args.repeat} runs, {os.cpu_count()} cores, "
          f"{subprocess.run(['redis-server', '--version'], capture_output=True, text=True).stdout.split()[2]}")
    w = max(len(r[0]) for r in rows)
    print(f"{'measure'.ljust(w)}  {'result':>18}  budget")
    for name, value, budget in rows:
        print(f"{name.ljust(w)}  {value:>18}  {budget}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
