"""governor's performance figures, in one command on a private redis-server.

    .venv/bin/python bench/run.py [--jobs 20000] [--repeat 3] [--only core,partitions,cluster]

No-op jobs (the body does one Redis INCR), 2 worker processes. Prints:
enqueue rate one call at a time and in bulk, drain throughput, CPU per job
(master + workers + redis-server), pickup latency on idle workers, Redis
commands per second at idle, the master's CPU with 16 and 64 idle workers,
hard-timeout overshoot over --kills kills, and how soon after crossing
memory.hard a worker is killed.

Partitioned queues (``partitions``): the same drain with 1,000 ordering keys over 16
partitions, pickup latency on an idle partitioned queue, and Redis commands per second per
idle worker with 64 (and 16) partitions; with the script calls per job and the hint tokens
a drain leaves behind, which show waste the throughput alone would hide.
Redis Cluster (``cluster``): a local cluster of 3 primaries and 3 replicas (tests/cluster.py),
the plain and the partitioned drain and pickup through a ``redis+cluster://`` URL; its CPU
per job counts every redis-server of the cluster. Skipped, with the reason, without redis-cli.
Scale on one host (``scale``): the drain with 16 and with 64 workers and the master's CPU
share during it; 64 workers running 200 ms jobs, the master's CPU with memory.interval 0.5 s
and 0.1 s (what sampling each busy worker's RSS costs); how late hard-timeout kills land
when 64 workers' deadlines fall together, a wave at a time (against 4 workers) and in
waves that interleave with the respawns, and how soon 64 workers crossing memory.hard
together are killed (with the master's time on a CPU, and waiting for one, meanwhile).
``--only`` runs some of these groups alone (partitions also runs the plain drain and pickup
it is compared with).
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
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import redis
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from governor import Client  # noqa: E402
from governor.ops import control  # noqa: E402
from governor.protocol.connection import connect  # noqa: E402
from governor.protocol.queue import run  # noqa: E402
from governor.supervise.housekeeping import TICK_IDLE_PARTITION  # noqa: E402

GROUPS = ("core", "partitions", "scale", "cluster")
PARTITIONS = 16  # the partitioned drain's and pickup's queue
KEYS = 1_000  # ordering keys in the partitioned drain

TASKS = '''
import os, time, redis

_conn = None


def _redis():
    global _conn
    if _conn is None:
        url = os.environ["BENCH_REDIS_URL"]
        if "+cluster://" in url:
            from governor.protocol.connection import connect
            _conn = connect(url)
        else:
            _conn = redis.Redis.from_url(url)
    return _conn


def sleep(seconds):
    time.sleep(seconds)


def hog(mb, limit_mb, tag=None):
    """Allocates past limit_mb, recording the moment its RSS crossed it: pushed on bench:crossed
    (one hog at a time), or, when many hog at once (``tag``), written to crossed/<tag> in the
    working directory: one write, no round trip for the master's kill to overtake."""
    chunks, crossed, start = [], False, time.time()
    if tag is None:
        _redis().ping()  # connected before the clock matters
    for _ in range(mb // 10):
        chunks.append(b"x" * (10 << 20))
        if not crossed:
            with open("/proc/self/statm") as fh:
                if int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") > limit_mb << 20:
                    crossed = True
                    if tag is None:
                        _redis().rpush("bench:crossed", time.time())
                    else:
                        fd = os.open(f"crossed/{tag}", os.O_WRONLY | os.O_CREAT, 0o600)
                        os.write(fd, f"{start!r} {time.time()!r}".encode())
                        os.close(fd)
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
    """A private redis-server, and a governor master started on it per measurement."""

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

    def servers(self) -> list[psutil.Process]:
        """Every redis-server the jobs' CPU is spent in."""
        return [psutil.Process(self.redis_proc.pid)]

    def primaries(self) -> list[redis.Redis]:
        """A plain client per server that takes commands (for INFO)."""
        return [self.redis]

    def _ping(self) -> bool:
        try:
            return self.redis.ping()
        except redis.ConnectionError:
            return False

    def start_master(self, prefix: str, concurrency: int, lease: str = "60s", **queue: object) -> None:
        cfg = {"redis": {"url": self.url, "prefix": prefix}, "lease": lease,
               "app": {"path": ["."], "preload": ["bench_tasks"], "handlers": ["bench_tasks:*"]},
               "state_dir": str(self.workdir / "state"), "log": {"level": "warning"},
               "queues": {"bench": {"concurrency": concurrency, **queue}}}
        path = self.workdir / "governor.yaml"
        path.write_text(yaml.safe_dump(cfg))
        env = dict(os.environ, BENCH_REDIS_URL=self.url)
        self.master = subprocess.Popen([sys.executable, "-m", "governor", "run", "-c", str(path)], env=env,
                                       cwd=self.workdir)
        wait_for(lambda: self.idle_workers() == concurrency, 60, "workers to be idle")

    def idle_workers(self) -> int:
        """How many of the master's workers are idle, as its status says (0 before it answers)."""
        try:
            st = control.request(str(self.workdir / "state"), "status")
        except OSError:
            return 0
        return sum(1 for w in st["pools"][0]["workers"] if w["state"] == "idle")

    def master_exit(self) -> int | None:
        """The master's exit status once it has exited (a bug that kills it ends a wait for
        its work at once, and is reported, rather than timing out), else None."""
        return self.master.poll() if self.master else None

    def stop_master(self) -> None:
        if self.master and self.master.poll() is None:
            self.master.send_signal(signal.SIGINT)  # fast stop: no need to wait for sleeping jobs
            self.master.wait(30)

    def close(self) -> None:
        self.stop_master()
        self.redis_proc.terminate()
        self.redis_proc.wait(10)


class ClusterSetup(Setup):
    """The same on a local Redis Cluster (tests/cluster.py's LocalCluster, started already):
    the master, the workers, the job bodies and the bench itself reach it through its
    ``redis+cluster://`` URL."""

    def __init__(self, workdir: Path, cluster: Any) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.cluster = cluster
        self.url = cluster.url
        self.redis = connect(self.url)
        self.nodes = {port: cluster.node(port) for port in cluster.primaries()}
        (workdir / "bench_tasks.py").write_text(textwrap.dedent(TASKS))
        self.master = None

    def servers(self) -> list[psutil.Process]:
        return [psutil.Process(p.pid) for p in self.cluster.procs.values() if p.poll() is None]

    def primaries(self) -> list[redis.Redis]:
        return list(self.nodes.values())

    def close(self) -> None:
        """Only the master: the cluster is stopped by whoever started it."""
        self.stop_master()


def command_counts(s: Setup) -> Counter:
    """Commands processed so far, summed over the primaries: ``total`` and per command (calls
    made inside scripts included). Each call adds one INFO per primary to the next reading."""
    out: Counter = Counter()
    for node in s.primaries():
        info = node.info("all")
        out["total"] += info["total_commands_processed"]
        for name, value in info.items():
            if name.startswith("cmdstat_") and isinstance(value, dict):
                out[name[len("cmdstat_"):]] += value["calls"]
    # governor's calls, as functions of its library (FCALL) or as scripts (EVALSHA, Redis < 7)
    out["script_calls"] = out["evalsha"] + out["fcall"] + out["fcall_ro"]
    return out


def commands_between(s: Setup, before: Counter, after: Counter) -> Counter:
    """What others sent between two readings: ours (the earlier INFO) taken out."""
    delta = Counter({k: after[k] - before[k] for k in after})
    own = len(s.primaries())
    delta["total"] -= own
    delta["info"] -= own
    return delta


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


@dataclass
class Drain:
    """One drain: throughput and CPU, and what Redis did for it (per job, from INFO
    commandstats on every primary): script calls and blocking pops from the last enqueue's
    start to the last ack, and the tokens left in the list idle workers block on (the wake
    list; a partitioned queue's hint list), which they then spend one reserve each on."""

    rate: float
    cpu_ms: float
    cpu_master: float = 0.0  # ms per job, of cpu_ms: the master's,
    cpu_workers: float = 0.0  # its children's (the workers'),
    cpu_redis: float = 0.0  # every redis-server's
    evalsha: float = 0.0
    blpop: float = 0.0
    enqueue_s: float = 0.0  # of the drain's time, the enqueue_many call of all its jobs
    tokens_left: int = 0
    tail_evalsha: int = 0  # script calls after the last ack, until no token was left
    tail_seconds: float = 0.0


def wait_partitions_held(c: Client, partitions: int) -> None:
    """Until the master leases every partition: before that, a producer's hint for a partition
    finds no holder and its job waits for the holder's first pass."""
    wait_for(lambda: len(c.partition_holders("bench")) == partitions, 30, "the partition leases")


def idle_list(c: Client, partitions: int) -> str:
    """The list the queue's idle workers block on: its wake list, or its master's hint list."""
    keys = c.keys("bench")
    if not partitions:
        return keys.wake
    return keys.hint_list(next(iter(c.partition_holders("bench").values())))


def bench_drain(s: Setup, n: int, prefix: str, partitions: int = 0, keys: int = KEYS,
                workers: int = 2, **queue: object) -> Drain:
    """``partitions``: the same jobs on a partitioned queue, each with one of ``keys`` ordering
    keys (every key gets n / keys jobs, run one at a time in enqueue order)."""
    # no recycling here: a recycled worker's CPU would leave the accounting with it
    if partitions:
        queue["partitions"] = partitions
    s.start_master(prefix, workers, recycle={"max_jobs": "off"}, **queue)
    c = Client.from_url(s.url, prefix=prefix)
    if partitions:
        wait_partitions_held(c, partitions)
    tokens = idle_list(c, partitions)
    master = psutil.Process(s.master.pid)
    procs = {"master": [master], "workers": master.children(), "redis": s.servers()}
    before = command_counts(s)
    cpu0 = {k: cpu_seconds(v) for k, v in procs.items()}
    t0 = time.perf_counter()
    if partitions:
        c.enqueue_many("bench", [{"handler": "bench_tasks:incr", "key": f"k{i % keys}"} for i in range(n)])
    else:
        c.enqueue_many("bench", [{"handler": "bench_tasks:incr"} for _ in range(n)])
    enqueued = time.perf_counter() - t0
    # one GET per look until the last body ran: counts() costs 7 commands per partition
    wait_for(lambda: int(s.redis.get("bench:counter") or 0) >= n, 300, "the drain", interval=0.005)
    wait_for(lambda: c.counts("bench")["done_total"] >= n, 30, "the last acks", interval=0.002)
    elapsed = time.perf_counter() - t0
    cpu = {k: (cpu_seconds(v) - cpu0[k]) / n * 1000 for k, v in procs.items()}
    during = commands_between(s, before, command_counts(s))
    left = s.redis.llen(tokens)
    t1 = time.perf_counter()
    wait_for(lambda: s.redis.llen(tokens) == 0, 120, "the idle workers to spend the tokens left")
    tail_seconds = time.perf_counter() - t1
    time.sleep(0.2)  # the reserve after the last token
    tail = commands_between(s, before, command_counts(s))["script_calls"] - during["script_calls"]
    s.stop_master()
    assert int(s.redis.get("bench:counter")) >= n
    s.redis.flushall()
    return Drain(n / elapsed, sum(cpu.values()), cpu["master"], cpu["workers"], cpu["redis"],
                 during["script_calls"] / n, during["blpop"] / n, enqueued, left, max(tail, 0), tail_seconds)


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


def bench_pickup(s: Setup, samples: int, prefix: str, partitions: int = 0,
                 idle_seconds: float = 30) -> tuple[list[float], float | None]:
    """Enqueue -> start (ms, sorted) of one job at a time on idle workers; on a partitioned
    queue each job has a key of its own (so a partition of its own, as the key hashes), and
    the master holds every partition before the first. Then, unless ``idle_seconds`` is 0,
    the Redis commands per second with nothing queued."""
    s.start_master(prefix, 2, **({"partitions": partitions} if partitions else {}))
    c = Client.from_url(s.url, prefix=prefix)
    if partitions:
        wait_partitions_held(c, partitions)

    def key(i: int) -> str | None:
        return f"p{i}" if partitions else None

    c.enqueue("bench", "bench_tasks:pickup", time.time(), key=key(-1))  # warm up
    wait_for(lambda: s.redis.llen("bench:pickup") == 1, 10, "warm-up job")
    s.redis.delete("bench:pickup")
    for i in range(samples):
        time.sleep(0.02)  # both workers are idle and blocked in Redis again
        c.enqueue("bench", "bench_tasks:pickup", time.time(), key=key(i))
    wait_for(lambda: s.redis.llen("bench:pickup") == samples, 30, "pickup samples")
    lat = sorted(float(x) * 1000 for x in s.redis.lrange("bench:pickup", 0, -1))
    idle = None
    if idle_seconds:
        # idle Redis traffic: commands processed (those run inside scripts included) in 30 s with
        # nothing queued, minus our own INFO call; 30 s spans several of the master's idle passes
        time.sleep(1)
        before = s.redis.info("stats")["total_commands_processed"]
        time.sleep(idle_seconds)
        after = s.redis.info("stats")["total_commands_processed"]
        idle = (after - before - 1) / idle_seconds
    s.stop_master()
    s.redis.flushall()
    return lat, idle


@dataclass
class Trickle:
    """Per job, when producers enqueue one job per call while the workers are busy."""

    evalsha: float
    blpop: float
    commands: float  # every command, those run inside scripts included
    tokens_left: int  # wake/hint tokens left when the last job ran (each costs a reserve)


def bench_trickle(s: Setup, n: int, prefix: str, partitions: int = 0) -> Trickle:
    """What Redis does per job when each job comes in a call of its own, as fast as one
    producer sends them, to 2 workers that are mostly busy. A hint names a partition, and a
    worker already on it serves the job without it: the hint is left for an idle worker to
    spend a reserve on. Counted from the first enqueue until the tokens left are spent."""
    s.start_master(prefix, 2, recycle={"max_jobs": "off"}, **({"partitions": partitions} if partitions else {}))
    c = Client.from_url(s.url, prefix=prefix)
    if partitions:
        wait_partitions_held(c, partitions)
    tokens = idle_list(c, partitions)
    before = command_counts(s)
    for i in range(n):
        c.enqueue("bench", "bench_tasks:incr", key=f"k{i % KEYS}" if partitions else None)
    wait_for(lambda: int(s.redis.get("bench:counter") or 0) >= n, 120, "the trickle", interval=0.005)
    left = s.redis.llen(tokens)
    wait_for(lambda: s.redis.llen(tokens) == 0, 60, "the idle workers to spend the tokens left")
    time.sleep(0.2)
    delta = commands_between(s, before, command_counts(s))
    s.stop_master()
    s.redis.flushall()
    return Trickle(delta["script_calls"] / n, delta["blpop"] / n, delta["total"] / n, left)


@dataclass
class Idle:
    """Redis traffic of one master with idle workers on a partitioned queue, per second."""

    per_worker: float
    total: float
    evalsha: float  # script calls: the partition-lease pass, the ticks of held partitions
    blpop: float  # idle workers' blocking waits running out


def bench_partitions_idle(s: Setup, prefix: str, partitions: int, workers: int,
                          seconds: float = 30) -> Idle:
    """Commands per second with ``workers`` idle workers on a queue of ``partitions``
    partitions, all held by this master, nothing queued: the steady state. For two leases
    after taking a partition the master looks at it twice per lease (a handover may have left
    a job there), so the lease is 5 s here and the window starts after those 10 s; then an
    empty partition is looked at every 300 s, or when a producer touches it. A window of
    30 s holds one timeout of each worker's blocking wait (30 s)."""
    s.start_master(prefix, workers, lease="5s", partitions=partitions)
    c = Client.from_url(s.url, prefix=prefix)
    wait_partitions_held(c, partitions)
    time.sleep(16)  # past the looks at the partitions just taken (every 2.5 s for 10 s)
    before = command_counts(s)
    time.sleep(seconds)
    delta = commands_between(s, before, command_counts(s))
    # the look at each empty partition every 300 s falls outside the window: its cost, one
    # tick of an empty partition measured here, is added spread over those 300 s
    probe = command_counts(s)
    run(s.redis, c.keys("bench").part(0).tick(3_600_000))
    tick = commands_between(s, probe, command_counts(s))["total"]
    s.stop_master()
    s.redis.flushall()
    total = delta["total"] / seconds + partitions * tick / TICK_IDLE_PARTITION
    return Idle(total / workers, total, delta["script_calls"] / seconds, delta["blpop"] / seconds)


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


# -- scale on one host ------------------------------------------------------------------

SCALE_WORKERS = (16, 64)  # the drains' pools
SCALE_KILL_WAVES = 3  # waves of timeout kills at 64 workers (a job per worker each)
KILL_LIMIT = 0.5  # seconds: timeout.hard in the kill bench


def bench_busy_master(s: Setup, prefix: str, workers: int, interval: str, seconds: float = 15,
                      job: float = 0.2) -> float:
    """The master's CPU (% of a core) while every worker runs ``job``-second jobs from a backlog
    that outlasts the window: reading the scoreboard every SCAN_BUSY, turning each run into
    metrics, and sampling each busy worker's RSS every memory.interval. Counted from the
    master's own cpu_times, so others' load on the host (a CPU shared with them) does not
    enter it, only the ticks' 10 ms resolution (0.07 % of a core over 15 s)."""
    s.start_master(prefix, workers, recycle={"max_jobs": "off"}, memory={"interval": interval})
    c = Client.from_url(s.url, prefix=prefix)
    n = int(workers * (seconds + 5) / job)
    c.enqueue_many("bench", [{"handler": "bench_tasks:sleep", "args": [job]} for _ in range(n)])
    m = psutil.Process(s.master.pid)
    time.sleep(2)  # every worker busy, its first reports read
    c0, t0 = cpu_seconds([m]), time.perf_counter()
    time.sleep(seconds)
    cpu, elapsed = cpu_seconds([m]) - c0, time.perf_counter() - t0
    left = c.counts("bench")["waiting"]
    s.stop_master()
    s.redis.flushall()
    if not left:
        raise SystemExit(f"bench: the backlog of {job:g} s jobs ran out inside the window")
    return cpu / elapsed * 100


@dataclass
class Kills:
    """Kills at a limit, in ms late, each sorted. Hard timeouts: ``late`` from the job's own
    record (its error's ``seconds``: start to the master stopping the run, minus the limit:
    what a user sees); ``sent`` the error's ``overshoot`` (the master's own count of the
    same: deadline to the stop). memory.hard: ``late`` from crossing it to the kill, ``sent``
    from crossing it to the job settled (after the reap)."""

    late: list[float]
    sent: list[float]
    asked: int  # the kills set up: more than len(late) if the master died before the rest
    died: int | None = None  # the master's exit status, if it died
    # the master from the first enqueue to the last kill settled, in ms: on a CPU, runnable
    # but waiting for one (what a host busy with others, or with the workers, costs it), wall
    use: tuple[float, float, float] | None = None  # None: not known (it died, or no schedstat)


def sched_ms(pid: int) -> tuple[float, float, float] | None:
    """(ms on a CPU, ms runnable but waiting for one, since it started; now, in ms) of a
    process, from the kernel's /proc/PID/schedstat; None if it is gone or there is none."""
    try:
        with open(f"/proc/{pid}/schedstat") as fh:
            on_cpu, waiting = (int(x) / 1e6 for x in fh.read().split()[:2])
    except (OSError, ValueError):
        return None
    return on_cpu, waiting, time.perf_counter() * 1000


def settled_errors(s: Setup, c: Client, ids: list[str], want: int, timeout: float, what: str,
                   since: tuple[float, float, float] | None
                   ) -> tuple[list[tuple[int, dict]], int | None, tuple[float, float, float] | None]:
    """Waits until ``want`` jobs are dead, or the master dies; then (the index among ``ids`` and
    the first error of every dead job, the master's exit status if it died, its use of the
    CPU since ``since``, a sched_ms reading)."""
    wait_for(lambda: s.master_exit() is not None or c.counts("bench")["dead"] >= want, timeout, what,
             interval=0.05)
    died = s.master_exit()
    now = sched_ms(s.master.pid)  # (a master that died is gone: its reading with it)
    use = tuple(b - a for a, b in zip(since, now, strict=True)) if since and now and died is None else None
    s.stop_master()
    out = []
    for n, i in enumerate(ids):
        job = c.job(i, "bench") or {}
        if job.get("state") == "dead" and job.get("errors"):
            out.append((n, {**job["errors"][0], "started_at": job.get("started_at")}))
    s.redis.flushall()
    return out, died, use


def bench_kill_lateness(s: Setup, prefix: str, workers: int, waves: int, interleave: bool) -> Kills:
    """``waves`` x ``workers`` jobs that sleep 30 s under timeout.hard KILL_LIMIT, retry max 0,
    on ``workers`` idle workers. Each wave's jobs start together, so their deadlines fall
    together. ``interleave``: all enqueued at once, so every later wave starts as the
    respawned workers come up and its kills interleave with the respawns of the wave before;
    else a wave is enqueued when the pool is whole and idle again."""
    s.start_master(prefix, workers, timeout={"soft": "off", "hard": f"{KILL_LIMIT * 1000:.0f}ms"},
                   retry={"max": 0}, recycle={"max_jobs": "off"})
    c = Client.from_url(s.url, prefix=prefix)
    spec = {"handler": "bench_tasks:sleep", "args": [30]}
    kills = waves * workers
    since = sched_ms(s.master.pid)
    if interleave:
        ids = c.enqueue_many("bench", [spec] * kills)
    else:
        ids = []
        for wave in range(waves):
            if wave:
                wait_for(lambda n=wave * workers: s.master_exit() is not None
                         or c.counts("bench")["dead"] >= n, 60, "a wave of timeout kills", interval=0.05)
                wait_for(lambda: s.master_exit() is not None or s.idle_workers() == workers, 60,
                         "the pool to be whole again", interval=0.05)
            ids += c.enqueue_many("bench", [spec] * workers)
    errors, died, use = settled_errors(s, c, ids, kills, 120, "the timeout kills", since)
    errors = [e for _, e in errors if e.get("reason") == "timeout_hard"]
    return Kills(sorted((e["seconds"] - KILL_LIMIT) * 1000 for e in errors),
                 sorted(e.get("overshoot", 0.0) * 1000 for e in errors), kills, died, use)


def bench_memory_scale(s: Setup, prefix: str, workers: int, interval: str = "100ms",
                       hard_mb: int = 80, hog_mb: int = 130) -> Kills:
    """Time from each worker's RSS crossing memory.hard to its kill (ms, sorted, in ``late``),
    and to its job being settled as killed (``sent``), with every worker allocating past it
    at once (one job each, retry max 0): the sampling pass that finds them all over must kill
    them all before anything else. Counted from the job's start: its crossing on its own
    clock, its kill as the run time its error records (start to the master stopping it), its
    settle as Redis's clock at the settle minus at its reserve (a moment before it ran: the
    settle figure is a little high). The settle comes when the worker is reaped, after the
    kernel has freed its memory (64 x 130 MB here). A job records its crossing after each 10 MB chunk: one killed
    while its chunk is still being written has no record, and is left out (``asked``)."""
    s.start_master(prefix, workers, memory={"soft": "off", "hard": f"{hard_mb}MiB", "interval": interval},
                   retry={"max": 0}, recycle={"max_jobs": "off"})
    c = Client.from_url(s.url, prefix=prefix)
    shutil.rmtree(s.workdir / "crossed", ignore_errors=True)
    (s.workdir / "crossed").mkdir()
    since = sched_ms(s.master.pid)
    ids = c.enqueue_many("bench", [{"handler": "bench_tasks:hog", "args": [hog_mb, hard_mb, i]}
                                   for i in range(workers)])
    wait_for(lambda: s.master_exit() is not None or c.counts("bench")["dead"] >= workers, 60,
             "the memory kills", interval=0.05)
    # per job, seconds from its start to its crossing (its own clock, as its error's run time)
    crossed = {int(p.name): float(b) - float(a) for p in (s.workdir / "crossed").iterdir()
               for a, _, b in [p.read_text().partition(" ")] if b}
    errors, died, use = settled_errors(s, c, ids, workers, 10, "the memory kills", since)
    seen = [(crossed[n], e) for n, e in errors if n in crossed and e.get("reason") == "memory_hard"]
    return Kills(sorted((e["seconds"] - t) * 1000 for t, e in seen),
                 sorted((e["at"] / 1000 - e["started_at"] - t) * 1000 for t, e in seen), workers, died, use)


def run_scale(s: Setup, args: argparse.Namespace) -> dict:
    """The ``scale`` group, on the private redis-server: drains repeated --repeat times (their
    median), the rest once (long windows, or many kills pooled)."""
    res: dict = {"drains": {n: [] for n in SCALE_WORKERS}}
    for r in range(args.repeat):
        for n in SCALE_WORKERS:
            res["drains"][n].append(bench_drain(s, args.jobs, f"sd{n}-{r}", workers=n))
    res["busy"] = {iv: bench_busy_master(s, f"sb{iv}", 64, iv) for iv in ("500ms", "100ms")}
    res["kills"] = {
        "64 workers, waves 1 by 1": bench_kill_lateness(s, "skw", 64, SCALE_KILL_WAVES, interleave=False),
        "64 workers, waves interleaved": bench_kill_lateness(s, "ski", 64, SCALE_KILL_WAVES, interleave=True),
        "4 workers, waves 1 by 1": bench_kill_lateness(s, "sk4", 4, 16, interleave=False),
    }
    res["memory"] = bench_memory_scale(s, "sm", 64)
    return res


def pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


Row = tuple[str, str, str]


def run_single(s: Setup, args: argparse.Namespace) -> dict:
    """Every measurement on the private redis-server that ``--only`` asks for."""
    core, parts = "core" in args.only, "partitions" in args.only
    res: dict = {"drains": [], "pdrains": [], "singles": [], "bulks": [], "limited": []}
    for r in range(args.repeat):
        if core:
            single, bulk = bench_enqueue(s, 5000, 100_000)
            res["singles"].append(single)
            res["bulks"].append(bulk)
        if core or parts:
            res["drains"].append(bench_drain(s, args.jobs, f"d{r}"))
        if parts:
            res["pdrains"].append(bench_drain(s, args.jobs, f"pd{r}", partitions=PARTITIONS))
        if core:
            # the same drain with fleet-wide limits configured that never bind: their cost
            res["limited"].append(bench_drain(s, args.jobs, f"l{r}", global_concurrency=100,
                                              rate_limit={"limit": 1_000_000, "per": "1s"}))
    if core:
        res["accuracy"] = {a: bench_rate_limit(s, a) for a in ("token_bucket", "sliding_window", "fixed_window")}
    if core or parts:
        res["lat"], res["idle_cmds"] = bench_pickup(s, args.pickups, "p", idle_seconds=30 if core else 0)
    if parts:
        res["plat"], _ = bench_pickup(s, args.pickups, "pp", partitions=PARTITIONS, idle_seconds=0)
        res["trickle"] = [bench_trickle(s, 3000, f"t{p}", partitions=p) for p in (0, PARTITIONS)]
        # 30 s and 15 s after the first pass: two and one of the idle passes (every 15 s)
        res["pidle"] = {64: bench_partitions_idle(s, "pi64", 64, 8, seconds=30),
                        16: bench_partitions_idle(s, "pi16", 16, 8, seconds=30)}
    if core:
        res["master_idle"] = bench_master_idle(s, "m", 16)
        res["master_busy_64"] = bench_master_idle(s, "m64", 64, seconds=20, busy=True)
        res["overshoot"] = bench_timeout_overshoot(s, args.kills)
        res["reaction"] = bench_memory_reaction(s, 10, "500ms")
        res["reaction_fast"] = bench_memory_reaction(s, 10, "100ms")
    return res


def cluster_missing() -> str | None:
    """Why no local cluster can be started here, or None."""
    for binary in ("redis-server", "redis-cli"):
        if not shutil.which(binary):
            return f"no {binary} (apt-get install redis-server; redis-cli is in redis-tools)"
    return None


def run_cluster(workdir: Path, args: argparse.Namespace) -> list[Row]:
    """The plain and the partitioned drain and pickup on a local 3+3 Redis Cluster, started
    once for all of them; a cluster that cannot start is a row saying why."""
    name = "Redis Cluster (3 primaries + 3 replicas)"
    why = cluster_missing()
    if why is None:
        try:
            sys.path.insert(0, str(ROOT / "tests"))
            from cluster import LocalCluster  # tests/cluster.py: the tests' own cluster
        except ImportError as exc:
            why = f"cannot import tests/cluster.py ({exc})"
    if why is not None:
        return [(name, f"skipped: {why}", "")]
    lc = LocalCluster(workdir / "cluster-nodes")
    try:
        lc.start()
    except Exception as exc:  # redis-cli --cluster create failed, a node did not come up...
        lc.stop()
        return [(name, f"skipped: the cluster did not start: {str(exc).splitlines()[0]}", "")]
    cs = None
    try:
        cs = ClusterSetup(workdir / "cluster-run", lc)
        drains, pdrains = [], []
        for r in range(args.repeat):
            drains.append(bench_drain(cs, args.jobs, f"cd{r}"))
            pdrains.append(bench_drain(cs, args.jobs, f"cpd{r}", partitions=PARTITIONS))
        lat, _ = bench_pickup(cs, args.pickups, "cp", idle_seconds=0)
        plat, _ = bench_pickup(cs, args.pickups, "cpp", partitions=PARTITIONS, idle_seconds=0)
    finally:
        if cs is not None:
            cs.close()
        lc.stop()
    d, pd = _median_drain(drains), _median_drain(pdrains)
    return [
        (f"cluster: drain, {args.jobs:,} no-op jobs, 2 workers", f"{d.rate:,.0f} jobs/s", ""),
        ("cluster: CPU per job (master+workers+6 redis-servers)", f"{d.cpu_ms:.3f} ms", ""),
        (f"cluster: partitioned drain, {PARTITIONS} partitions, {KEYS:,} keys", f"{pd.rate:,.0f} jobs/s",
         "within 20% of the cluster's plain drain"),
        ("cluster: partitioned drain / plain drain", f"{pd.rate / d.rate:.0%}", ">= 80%"),
        ("cluster: CPU per job, same", f"{pd.cpu_ms:.3f} ms", ""),
        ("cluster: CPU per job in master / workers / redis-servers, plain",
         f"{d.cpu_master:.3f} / {d.cpu_workers:.3f} / {d.cpu_redis:.3f} ms", ""),
        ("cluster: EVALSHA per job, plain / partitioned", f"{d.evalsha:.2f} / {pd.evalsha:.2f}", ""),
        ("cluster: pickup latency p50 / p99", f"{pct(lat, 50):.2f} / {pct(lat, 99):.2f} ms", ""),
        (f"cluster: partitioned pickup p50 / p99 ({PARTITIONS} partitions)",
         f"{pct(plat, 50):.2f} / {pct(plat, 99):.2f} ms", ""),
    ]


def _median_drain(drains: list[Drain]) -> Drain:
    """Each figure's median over the trials."""
    med = statistics.median
    return Drain(*(med(getattr(d, f) for d in drains) for f in Drain.__dataclass_fields__))


def drain_rows(res: dict, args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    if not res["drains"]:
        return rows
    d = _median_drain(res["drains"])
    rows += [(f"drain, {args.jobs:,} no-op jobs, 2 workers", f"{d.rate:,.0f} jobs/s", ">= 3,186 (2x huey)"),
             ("CPU per job (master+workers+redis)", f"{d.cpu_ms:.3f} ms", "<= 0.3 ms"),
             ("  in master / workers / redis-server",
              f"{d.cpu_master:.3f} / {d.cpu_workers:.3f} / {d.cpu_redis:.3f} ms", "")]
    if res["pdrains"]:
        pd = _median_drain(res["pdrains"])
        rows += [
            (f"partitioned drain, {PARTITIONS} partitions, {KEYS:,} keys, 2 workers", f"{pd.rate:,.0f} jobs/s",
             "within 20% of the plain drain"),
            ("partitioned drain / plain drain", f"{pd.rate / d.rate:.0%}", ">= 80%"),
            ("CPU per job, same", f"{pd.cpu_ms:.3f} ms", "within 20% of the plain drain's"),
            ("of the drain's time, enqueue_many, plain / partitioned",
             f"{d.enqueue_s:.2f} / {pd.enqueue_s:.2f} s", ""),
            ("EVALSHA per job, plain / partitioned", f"{d.evalsha:.2f} / {pd.evalsha:.2f}", ""),
            ("BLPOP per job, plain / partitioned", f"{d.blpop:.3f} / {pd.blpop:.3f}", ""),
            ("wake/hint tokens left at the drain's end, plain / partitioned",
             f"{d.tokens_left:,.0f} / {pd.tokens_left:,.0f}", ""),
            ("reserves spent on them, plain / partitioned", f"{d.tail_evalsha:,.0f} / {pd.tail_evalsha:,.0f}", ""),
            ("time the partitioned queue's workers spent on them", f"{pd.tail_seconds:.2f} s", ""),
        ]
    if res.get("trickle"):
        t, pt = res["trickle"]
        rows += [
            ("one job per enqueue call, busy workers: EVALSHA per job, plain / partitioned",
             f"{t.evalsha:.2f} / {pt.evalsha:.2f}", ""),
            ("  BLPOP per job, same", f"{t.blpop:.3f} / {pt.blpop:.3f}", ""),
            ("  all Redis commands per job, same", f"{t.commands:.1f} / {pt.commands:.1f}", ""),
            ("  wake/hint tokens left when the last job ran, same", f"{t.tokens_left:,} / {pt.tokens_left:,}", ""),
        ]
    if res["limited"]:
        lim = _median_drain(res["limited"])
        rows += [("drain with a rate limit + global_concurrency (not binding)", f"{lim.rate:,.0f} jobs/s",
                  "within noise of the drain"),
                 ("CPU per job, same", f"{lim.cpu_ms:.3f} ms", "")]
    return rows


def pickup_rows(res: dict) -> list[Row]:
    rows: list[Row] = []
    if "lat" not in res:
        return rows
    lat = res["lat"]
    rows.append(("pickup latency p50 (idle workers)", f"{pct(lat, 50):.2f} ms", "< 1 ms"))
    if res["idle_cmds"] is not None:
        rows.append(("pickup latency p95", f"{pct(lat, 95):.2f} ms", ""))
    rows.append(("pickup latency p99", f"{pct(lat, 99):.2f} ms", "< 5 ms"))
    if "plat" in res:
        plat = res["plat"]
        rows += [(f"partitioned pickup p50 ({PARTITIONS} partitions, a key per job)",
                  f"{pct(plat, 50):.2f} ms", "< 1 ms"),
                 ("partitioned pickup p99", f"{pct(plat, 99):.2f} ms", "< 5 ms")]
    if res["idle_cmds"] is not None:
        rows.append(("Redis commands/s at idle (2 workers)", f"{res['idle_cmds']:.2f}", "< 2"))
    for n, idle in res.get("pidle", {}).items():
        rows += [(f"Redis commands/s per idle worker, {n} partitions, 8 workers", f"{idle.per_worker:.2f}",
                  "< 2 per worker"),
                 (f"  all commands / EVALSHA / BLPOP per s, {n} partitions",
                  f"{idle.total:.1f} / {idle.evalsha:.2f} / {idle.blpop:.2f}", "")]
    return rows


def core_rows(res: dict) -> tuple[list[Row], list[Row], list[Row]]:
    """(the enqueue rows, the rate limits' rows, the rows after pickup), when the core group ran."""
    if not res["singles"]:
        return [], [], []
    med = statistics.median
    overshoot, reaction, reaction_fast = res["overshoot"], res["reaction"], res["reaction_fast"]
    head = [("enqueue, one call at a time", f"{med(res['singles']):,.0f} jobs/s", ">= 6,316 (2x huey)"),
            ("enqueue, bulk (enqueue_many)", f"{med(res['bulks']):,.0f} jobs/s", "> 50,000")]
    limits = [(f"{a} 50/s, 4 workers: most starts (Redis time) in 1s, sustained rate", f"{w} / {r:.1f}/s",
               "<= 50 / >= 47.5")
              for a, (w, r) in res["accuracy"].items()]
    tail = [
        ("master CPU, 16 idle workers", f"{res['master_idle']:.3f} % of a core", "< 0.1 %"),
        ("master CPU, 64 busy workers sampled every 0.5s", f"{res['master_busy_64']:.3f} % of a core", "< 1 %"),
        (f"hard-timeout overshoot p50 ({len(overshoot)} kills)", f"{pct(overshoot, 50):.1f} ms", ""),
        ("hard-timeout overshoot p99", f"{pct(overshoot, 99):.1f} ms", "< 100 ms"),
        ("hard-timeout overshoot max", f"{overshoot[-1]:.1f} ms", "< 100 ms"),
        ("memory.hard kill after crossing, 0.5s samples, p50", f"{pct(reaction, 50):.0f} ms", "<= 2 samples"),
        ("memory.hard kill after crossing, 0.5s samples, max", f"{reaction[-1]:.0f} ms", "<= 1,000 ms"),
        ("memory.hard kill after crossing, 0.1s samples, max", f"{reaction_fast[-1]:.0f} ms", "<= 200 ms"),
    ]
    return head, limits, tail


def died(k: Kills) -> str:
    """What a row says of a master that died before all its kills."""
    return "" if k.died is None else f"MASTER DIED (exit {k.died}) after {len(k.late)} of {k.asked}"


def use_row(k: Kills) -> Row:
    """How the master spent the kills' time: a loop waiting for a CPU is late for all it does."""
    name = "  the master meanwhile: on a CPU / waiting for one / wall"
    if k.use is None:
        return (name, "not known", "")
    on_cpu, waiting, wall = k.use
    return (name, f"{on_cpu:,.0f} / {waiting:,.0f} / {wall:,.0f} ms", "")


def scale_rows(res: dict, args: argparse.Namespace) -> list[Row]:
    """The ``scale`` group's rows, when it ran."""
    if not res:
        return []
    med = statistics.median
    rows: list[Row] = []
    for n, drains in res["drains"].items():
        d = _median_drain(drains)
        # ms of the master's CPU per job times jobs/s: ms per s, a tenth of a % of a core
        share = med(x.cpu_master * x.rate / 10 for x in drains)
        rows += [(f"drain, {n} workers ({args.jobs:,} no-op jobs)", f"{d.rate:,.0f} jobs/s", ""),
                 ("  master CPU during it", f"{share:.2f} % of a core", "")]
    slow, fast = res["busy"]["500ms"], res["busy"]["100ms"]
    # 64 workers sampled 10 times a second instead of 2: 512 more samples a second
    sample_us = (fast - slow) / 100 / (64 * (10 - 2)) * 1e6
    rows += [("master CPU, 64 workers running 200 ms jobs, memory.interval 0.5s", f"{slow:.2f} % of a core", "< 5 %"),
             ("  same, memory.interval 0.1s", f"{fast:.2f} % of a core", "< 5 %"),
             ("  one RSS sample of a busy worker (from the difference)", f"{sample_us:.0f} us", "")]
    for name, k in res["kills"].items():
        if not k.late:
            rows.append((f"hard-timeout kill lateness, {name}", "no kill settled", died(k)))
            continue
        rows += [(f"hard-timeout kill lateness, {name}, {len(k.late)} kills at {KILL_LIMIT:g}s: p50 / p90",
                  f"{pct(k.late, 50):.1f} / {pct(k.late, 90):.1f} ms", died(k)),
                 ("  p99 / max", f"{pct(k.late, 99):.1f} / {k.late[-1]:.1f} ms",
                  "p99 < 50 ms" if name.startswith("64") else ""),
                 ("  of it, SIGKILL sent after the deadline p50 / p99 / max",
                  f"{pct(k.sent, 50):.1f} / {pct(k.sent, 99):.1f} / {k.sent[-1]:.1f} ms", ""),
                 use_row(k)]
    mem = res["memory"]
    name = f"memory.hard kill after crossing, {mem.asked} workers at once, 0.1s samples"
    if mem.late:
        rows += [(f"{name}, p50 / max ({len(mem.late)} kills seen crossing)",
                  f"{pct(mem.late, 50):.0f} / {mem.late[-1]:.0f} ms", "<= 200 ms"),
                 ("  to the job settled (the worker reaped: its memory freed) p50 / max",
                  f"{pct(mem.sent, 50):.0f} / {mem.sent[-1]:.0f} ms", ""), use_row(mem)]
    else:
        rows.append((name, "no kill settled", died(mem)))
    if mem.late and mem.died is not None:
        rows.append(("  (the master died)", "", died(mem)))
    return rows


def groups(text: str) -> tuple[str, ...]:
    chosen = tuple(g.strip() for g in text.split(",") if g.strip())
    unknown = [g for g in chosen if g not in GROUPS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"expected some of {', '.join(GROUPS)} (comma-separated)")
    return chosen


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pickups", type=int, default=300)
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--only", type=groups, default=GROUPS,
                    help=f"run only these groups of rows, comma-separated: {', '.join(GROUPS)}")
    args = ap.parse_args()
    res: dict = {"drains": [], "pdrains": [], "singles": [], "limited": []}
    scale: dict = {}
    cluster: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="governor-bench-") as tmp:
        if {"core", "partitions", "scale"} & set(args.only):
            s = Setup(Path(tmp))
            try:
                if "core" in args.only or "partitions" in args.only:
                    res = run_single(s, args)
                if "scale" in args.only:
                    scale = run_scale(s, args)
            finally:
                s.close()
        if "cluster" in args.only:
            cluster = run_cluster(Path(tmp), args)
    head, limits, tail = core_rows(res)
    rows = [*head, *drain_rows(res, args), *limits, *pickup_rows(res), *tail, *scale_rows(scale, args), *cluster]
    print(f"\ngovernor bench: median of {args.repeat} runs, {os.cpu_count()} cores, "
          f"{subprocess.run(['redis-server', '--version'], capture_output=True, text=True).stdout.split()[2]}")
    w = max(len(r[0]) for r in rows)
    print(f"{'measure'.ljust(w)}  {'result':>18}  budget")
    for name, value, budget in rows:
        print(f"{name.ljust(w)}  {value:>18}  {budget}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
