"""governor side by side with huey and Celery: one command, one private redis-server.

    .venv/bin/python bench/peers.py [--jobs 10000] [--repeat 3] [--pickups 200] [--idle 30]

The peers come with ``pip install -e '.[bench]'``; without them governor runs alone and the
output says which peer was skipped and why.

Same for every system: the redis-server (started here on a free 127.0.0.1 port), 2 worker
processes, logging at warning, and the job bodies, which are bench/run.py's ``bench_tasks``
module written to a temp dir (plus a ``gate`` job): ``incr`` does one Redis INCR on a
counter in that Redis, ``pickup`` pushes ``time.time()`` minus the enqueue time. Each of
--repeat trials runs every system in turn (governor, huey, Celery), so slow drift of the
machine spreads over all; each figure is the median over the trials, and the ratio columns
are governor's figure over the peer's. Per system and trial:

- **enqueue, one at a time**: --enqueues jobs, one public enqueue call each (governor
  ``Client.enqueue``, huey calling the task, Celery ``task.delay()``), nothing consuming;
- the system is started and warmed up (jobs on both workers); then **pickup latency**:
  --pickups jobs one at a time, 20 ms apart, on idle workers: the job's ``time.time()`` at
  its start minus the one taken just before the enqueue call;
- **USS**: psutil ``memory_full_info().uss`` summed over all the system's processes (its
  master or consumer, its workers, and helpers such as huey's scheduler process), idle;
- **idle Redis commands/s**: INFO ``total_commands_processed`` over --idle seconds with nothing
  queued, the bench's own INFO call taken out. 30 s by default: governor's idle traffic comes
  in bursts (the master's pass every 15 s, each worker's 30 s blocking wait), which a 10 s
  window mostly misses or catches whole; the peers' comes every second;
- **drain**: both workers are held in a ``gate`` job, --jobs ``incr`` jobs are enqueued
  (governor with ``enqueue_many``, its bulk call; huey and Celery have none: one call each),
  then the gate opens. The rate is the jobs over the time from opening the gate to the last
  INCR (for governor to the last ack). **CPU per job**: the CPU time of the system's
  processes plus the redis-server's, from before the enqueue to the end, over the jobs (so
  Redis's share of enqueueing counts, as in bench/run.py; the bench's own process does not).

The defaults (10,000 jobs, 30 s idle windows, 3 trials) take about 7 minutes on 2 cores, most
of it Celery's one-call enqueue and drain.

Settings, all defaults unless said, and what each guarantees with them:

- **governor**: ``governor run`` with one queue of concurrency 2 (bench/run.py's Setup):
  lease 60 s, timeouts soft 50 s / hard 60 s and memory limits enforced by the master, except
  ``recycle.max_jobs: off`` (neither peer recycles by default, and a recycled worker's CPU
  would leave the accounting). A job is leased, not popped: the exact job of a worker that
  dies is requeued at once (or at lease expiry if the master died too), and a settle whose
  reply is lost can be re-sent without losing or doubling the job.
- **huey**: ``RedisHuey`` (blocking BRPOP, read_timeout 1 s; results on, but a task returning
  None stores nothing), consumer ``huey_consumer peer_huey.huey -w 2 -k process -q`` (``-q``:
  warning; the default INFO logs two lines per job). The worker pops the job off the list and
  nothing acks it: a job whose worker dies is lost (the consumer restarts the worker on its
  10 s health check). No time or memory limits unless a task asks.
- **Celery**: Redis broker, no result backend, ``celery -A peer_celery worker -c 2 -P prefork
  -O fair --without-gossip --without-mingle --without-heartbeat -l warning``;
  ``task_acks_late`` is False (the default): the message is acked as the job starts, so a job
  whose pool process dies is lost; messages the worker prefetched (multiplier 4: up to 8) and
  did not start come back after the visibility timeout (1 h) if the whole worker dies. No time
  limits by default.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from run import TASKS, Setup, cpu_seconds, pct, wait_for  # bench/run.py, beside this file

from governor import Client

WORKERS = 2
STOP_SECONDS = 30  # how long a system gets to stop before its processes are killed

GATE = '''

def gate():
    """Holds its worker until the bench opens the gate (or 45 s, below every time limit)."""
    r = _redis()
    r.rpush("bench:gated", 1)
    r.blpop("bench:gate", 45)
'''

HUEY_MODULE = '''
import os

from huey import RedisHuey

import bench_tasks

huey = RedisHuey("peers", url=os.environ["BENCH_REDIS_URL"])
incr = huey.task()(bench_tasks.incr)
pickup = huey.task()(bench_tasks.pickup)
gate = huey.task()(bench_tasks.gate)
'''

CELERY_MODULE = '''
import os

from celery import Celery

import bench_tasks

app = Celery("peer_celery", broker=os.environ["BENCH_REDIS_URL"])
app.conf.update(task_default_queue="peers-celery", result_backend=None,
                broker_connection_retry_on_startup=True)
incr = app.task(name="peers.incr")(bench_tasks.incr)
pickup = app.task(name="peers.pickup")(bench_tasks.pickup)
gate = app.task(name="peers.gate")(bench_tasks.gate)
'''

# (label, key, better, format): the rows of the table, in order
MEASURES = [
    ("drain", "drain", "higher", "{:,.0f} jobs/s"),
    ("enqueue, one at a time", "enqueue", "higher", "{:,.0f} jobs/s"),
    ("CPU per job (all processes + redis)", "cpu_ms", "lower", "{:.3f} ms"),
    ("pickup latency p50 (idle workers)", "p50", "lower", "{:.2f} ms"),
    ("pickup latency p99", "p99", "lower", "{:.2f} ms"),
    ("USS, all processes, idle", "uss_mib", "lower", "{:.1f} MiB"),
    ("Redis commands/s at idle", "idle_cmds", "lower", "{:.2f}"),
]


class System:
    """One job system on the bench's redis-server: how to enqueue, start and stop it."""

    name = ""

    def __init__(self, s: Setup) -> None:
        self.s = s
        self.root: psutil.Process | None = None  # its master or consumer, while it runs

    def version(self) -> str:
        raise NotImplementedError

    def reset(self) -> None:
        """An empty Redis for the next step (nothing of this system runs)."""
        self.s.redis.flushall()

    def enqueue(self, what: str, *args: Any) -> None:
        """One job of ``what`` (incr, pickup, gate), through the system's single-job call."""
        raise NotImplementedError

    def enqueue_drain(self, n: int) -> None:
        """``n`` incr jobs as the system's fastest public call sends them."""
        for _ in range(n):
            self.enqueue("incr")

    def start(self) -> None:
        raise NotImplementedError

    def drained(self, n: int) -> Callable[[], bool]:
        """Whether the drain is over, once its n INCRs are done."""
        return lambda: True

    def processes(self) -> list[psutil.Process]:
        """Every process of the system: its root and all its descendants."""
        if self.root is None:
            return []
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def _signal_stop(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the system the way its docs say; kill whatever is left after STOP_SECONDS."""
        procs = self.processes()
        if not procs:
            return
        try:
            self._signal_stop()
            psutil.wait_procs(procs, timeout=STOP_SECONDS)
        finally:
            for p in procs:
                try:
                    p.kill()  # psutil checks it is still the same process (no pid reuse)
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(procs, timeout=5)
            self.root = None


class Governor(System):
    name = "governor"

    def __init__(self, s: Setup) -> None:
        super().__init__(s)
        self.trial = 0
        self.client: Client | None = None

    def version(self) -> str:
        import governor
        return governor.__version__

    def enqueue(self, what: str, *args: Any) -> None:
        assert self.client is not None
        self.client.enqueue("bench", f"bench_tasks:{what}", *args)

    def enqueue_drain(self, n: int) -> None:
        assert self.client is not None
        self.client.enqueue_many("bench", [{"handler": "bench_tasks:incr"} for _ in range(n)])

    def enqueue_rate_client(self) -> None:
        self.client = Client.from_url(self.s.url, prefix="enq")

    def start(self) -> None:
        self.trial += 1
        prefix = f"peers{self.trial}"
        self.s.start_master(prefix, WORKERS, recycle={"max_jobs": "off"})
        assert self.s.master is not None
        self.root = psutil.Process(self.s.master.pid)
        self.client = Client.from_url(self.s.url, prefix=prefix)

    def drained(self, n: int) -> Callable[[], bool]:
        assert self.client is not None
        c = self.client
        goal = c.counts("bench")["done_total"] + n + WORKERS  # the jobs and the gates
        return lambda: c.counts("bench")["done_total"] >= goal

    def _signal_stop(self) -> None:
        self.s.stop_master()  # SIGINT (fast stop), then waits for the master

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self.s.master = None


class Huey(System):
    name = "huey"

    def __init__(self, s: Setup) -> None:
        super().__init__(s)
        import peer_huey  # written to the workdir by main()
        self.mod = peer_huey
        self.proc: subprocess.Popen | None = None

    def version(self) -> str:
        import huey
        return huey.__version__

    def enqueue(self, what: str, *args: Any) -> None:
        getattr(self.mod, what)(*args)

    def start(self) -> None:
        self.proc = spawn(self.s, "huey", "-m", "huey.bin.huey_consumer", "peer_huey.huey",
                          "-w", str(WORKERS), "-k", "process", "-q")
        self.root = psutil.Process(self.proc.pid)

    def _signal_stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)  # immediate stop (SIGINT waits for running jobs)


class Celery(System):
    name = "celery"

    def __init__(self, s: Setup) -> None:
        super().__init__(s)
        import peer_celery  # written to the workdir by main()
        self.mod = peer_celery
        self.proc: subprocess.Popen | None = None

    def version(self) -> str:
        import celery
        return celery.__version__

    def reset(self) -> None:
        """The producer remembers it declared the queue: declare it again after the flush,
        or kombu has no binding to route the next message by."""
        super().reset()
        app = self.mod.app
        with app.connection_for_write() as conn:
            for queue in app.amqp.queues.values():
                queue(conn.default_channel).declare()

    def enqueue(self, what: str, *args: Any) -> None:
        getattr(self.mod, what).delay(*args)

    def start(self) -> None:
        self.proc = spawn(self.s, "celery", "-m", "celery", "-A", "peer_celery", "worker",
                          "-c", str(WORKERS), "-P", "prefork", "--without-gossip",
                          "--without-mingle", "--without-heartbeat", "-O", "fair", "-l", "warning")
        self.root = psutil.Process(self.proc.pid)

    def _signal_stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGQUIT)  # cold stop: the workers are idle by now

    def close(self) -> None:
        self.mod.app.close()


def spawn(s: Setup, name: str, *argv: str) -> subprocess.Popen:
    """A peer's process in the workdir (where its module is), output to a log file there."""
    env = dict(os.environ, BENCH_REDIS_URL=s.url,
               PYTHONPATH=os.pathsep.join([str(s.workdir), os.environ.get("PYTHONPATH", "")]))
    with open(s.workdir / f"{name}.log", "ab") as log:
        return subprocess.Popen([sys.executable, *argv], cwd=s.workdir, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True)


def log_tail(s: Setup, name: str) -> str:
    path = s.workdir / f"{name}.log"
    return path.read_text(errors="replace")[-2000:] if path.exists() else ""


def enqueue_rate(sys_: System, n: int) -> float:
    """One public enqueue call per job, nothing consuming; Redis is emptied after."""
    sys_.reset()
    if isinstance(sys_, Governor):
        sys_.enqueue_rate_client()
    sys_.enqueue("incr")  # warm: the connection, the script cache, the queue's declaration
    t0 = time.perf_counter()
    for _ in range(n):
        sys_.enqueue("incr")
    rate = n / (time.perf_counter() - t0)
    sys_.reset()
    return rate


def counter(sys_: System) -> int:
    return int(sys_.s.redis.get("bench:counter") or 0)


def warm_up(sys_: System) -> None:
    """Until jobs have run on both workers (imports done, connections open), then idle."""
    try:
        wait_for(lambda: len(sys_.processes()) > WORKERS, 60, f"{sys_.name}'s workers")
        for _ in range(10 * WORKERS):
            sys_.enqueue("incr")
        wait_for(lambda: counter(sys_) >= 10 * WORKERS, 60, f"{sys_.name}'s warm-up jobs")
    except SystemExit:
        if sys_.name != "governor":
            print(log_tail(sys_.s, sys_.name), file=sys.stderr)
        raise
    time.sleep(1)
    sys_.s.redis.delete("bench:counter")


def pickup(sys_: System, samples: int) -> list[float]:
    """Enqueue -> start (ms, sorted) of one job at a time on idle workers."""
    r = sys_.s.redis
    for i in range(samples):
        time.sleep(0.02)  # both workers idle and waiting in Redis again
        sys_.enqueue("pickup", time.time())
        if i == 0:  # the first one warms the pickup path: not a sample
            wait_for(lambda: r.llen("bench:pickup") == 1, 10, "the first pickup")
            r.delete("bench:pickup")
    wait_for(lambda: r.llen("bench:pickup") == samples - 1, 30, "the pickup samples")
    lat = sorted(float(x) * 1000 for x in r.lrange("bench:pickup", 0, -1))
    r.delete("bench:pickup")
    return lat


def uss_mib(sys_: System) -> float:
    total = 0
    for p in sys_.processes():
        try:
            total += p.memory_full_info().uss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def idle_commands(sys_: System, seconds: float) -> float:
    """Commands per second Redis processed with nothing queued (ours, the first INFO, out)."""
    r = sys_.s.redis
    before = r.info("stats")["total_commands_processed"]
    time.sleep(seconds)
    after = r.info("stats")["total_commands_processed"]
    return (after - before - 1) / seconds


def drain(sys_: System, n: int) -> tuple[float, float]:
    """(jobs/s, CPU ms per job): n incr jobs queued behind both workers held in a gate job,
    timed from opening the gate until every job is done."""
    r = sys_.s.redis
    r.delete("bench:counter", "bench:gated", "bench:gate")
    procs = [*sys_.processes(), *sys_.s.servers()]
    done = sys_.drained(n)
    cpu0 = cpu_seconds(procs)
    for _ in range(WORKERS):
        sys_.enqueue("gate")
    wait_for(lambda: r.llen("bench:gated") == WORKERS, 30, f"{sys_.name}'s workers to take the gates")
    sys_.enqueue_drain(n)
    t0 = time.perf_counter()
    r.rpush("bench:gate", *["open"] * WORKERS)
    wait_for(lambda: counter(sys_) >= n, 600, f"{sys_.name}'s drain", interval=0.01)
    wait_for(done, 30, f"{sys_.name}'s last acks", interval=0.002)
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds(procs) - cpu0
    r.delete("bench:counter", "bench:gated", "bench:gate")
    return n / elapsed, cpu / n * 1000


def trial(sys_: System, args: argparse.Namespace) -> dict[str, float]:
    """Every figure of one system, once, from its start to its stop."""
    out = {"enqueue": enqueue_rate(sys_, args.enqueues)}
    try:
        sys_.start()
        warm_up(sys_)
        lat = pickup(sys_, args.pickups + 1)
        out["p50"], out["p99"] = pct(lat, 50), pct(lat, 99)
        time.sleep(1)
        out["uss_mib"] = uss_mib(sys_)
        out["idle_cmds"] = idle_commands(sys_, args.idle)
        out["drain"], out["cpu_ms"] = drain(sys_, args.jobs)
    finally:
        sys_.stop()
        sys_.reset()
    return out


def peers(s: Setup) -> tuple[list[System], dict[str, str]]:
    """The systems that can run here, and why each peer that cannot was skipped."""
    systems: list[System] = [Governor(s)]
    skipped: dict[str, str] = {}
    for cls in (Huey, Celery):
        try:
            systems.append(cls(s))
        except ImportError as exc:
            skipped[cls.name] = f"{exc} (pip install -e '.[bench]')"
    return systems, skipped


def write_modules(workdir: Path) -> None:
    (workdir / "bench_tasks.py").write_text(textwrap.dedent(TASKS) + GATE)
    (workdir / "peer_huey.py").write_text(HUEY_MODULE)
    (workdir / "peer_celery.py").write_text(CELERY_MODULE)


def table(systems: list[System], results: dict[str, list[dict[str, float]]]) -> list[str]:
    """Each figure's median per system, and governor's over each peer's."""
    med = {sys_.name: {k: statistics.median(t[k] for t in results[sys_.name]) for k in results[sys_.name][0]}
           for sys_ in systems}
    names = [sys_.name for sys_ in systems]
    head = ["measure", "better", *names, *(f"governor/{n}" for n in names[1:])]
    rows = [head]
    for label, key, better, fmt in MEASURES:
        row = [label, better, *(fmt.format(med[n][key]) for n in names)]
        for n in names[1:]:
            peer = med[n][key]
            row.append(f"{med['governor'][key] / peer:.2f}x" if peer else "-")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            for r in rows]


def redis_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()
    return out[2].removeprefix("v=") if len(out) > 2 else "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=10_000, help="jobs per drain, the same for every system")
    ap.add_argument("--repeat", type=int, default=3, help="trials; each figure is their median")
    ap.add_argument("--enqueues", type=int, default=5_000, help="jobs enqueued one call at a time")
    ap.add_argument("--pickups", type=int, default=200, help="pickup latency samples")
    ap.add_argument("--idle", type=float, default=30, help="seconds of idle Redis traffic counted")
    args = ap.parse_args()
    # a TERM stops the bench through the finally clauses below: nothing is left running
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="governor-peers-") as tmp:
        workdir = Path(tmp)
        s = Setup(workdir)
        systems: list[System] = []
        skipped: dict[str, str] = {}
        try:
            write_modules(workdir)
            os.environ["BENCH_REDIS_URL"] = s.url  # for the peer modules the bench imports
            sys.path.insert(0, str(workdir))
            systems, skipped = peers(s)
            results: dict[str, list[dict[str, float]]] = {sys_.name: [] for sys_ in systems}
            for r in range(args.repeat):
                for sys_ in systems:
                    print(f"trial {r + 1}/{args.repeat}: {sys_.name}", file=sys.stderr, flush=True)
                    res = trial(sys_, args)
                    results[sys_.name].append(res)
                    print("  " + ", ".join(f"{k} {v:,.3g}" for k, v in res.items()), file=sys.stderr, flush=True)
        finally:
            for sys_ in systems:
                sys_.stop()
                if isinstance(sys_, Celery):
                    sys_.close()
            s.close()
    print(f"\npeers bench: {WORKERS} workers each, {args.jobs:,} jobs per drain, {args.enqueues:,} "
          f"enqueues, {args.pickups} pickups, {args.idle:g} s idle; median of {args.repeat}; "
          f"{os.cpu_count()} cores, redis {redis_version()}")
    print("versions: " + ", ".join(f"{sys_.name} {sys_.version()}" for sys_ in systems))
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    if len(systems) > 1:
        print("ratios: governor's figure over the peer's (where lower is better, below 1 is governor ahead)")
    print()
    print("\n".join(table(systems, results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
