"""Jobs in flight per worker (issue 23): governor with ``jobs_per_worker`` against its peers.

    .venv/bin/python bench/inflight.py [--jobs 10000] [--repeat 3] [--only io,drain,memory,limits]

One command, one private redis-server (bench/run.py's Setup), real processes. Prints four
tables, each figure the median of --repeat trials (systems taken in turn within a trial, so
slow drift of the machine spreads over all):

1. **io**: I/O-bound jobs, 100 in flight over 2 processes. Each job waits 20 ms on I/O
   (``asyncio.sleep`` in a coroutine, ``time.sleep`` on a thread or under gevent,
   ``setTimeout`` in Node) and then does one Redis INCR: the ceiling is 100 / 0.020 = 5,000
   jobs/s. Columns: jobs/s, % of that ceiling, CPU per job (every process of the system plus
   the redis-server), and the USS of all the system's processes (psutil, sampled every
   0.1 s during the run, the largest sum).
2. **drain**: no-op jobs (one INCR each) with 2 processes: governor at ``jobs_per_worker`` 1,
   16 and 50 (plain functions, on threads) against huey (bench/peers.py's Huey system:
   ``-w 2 -k process``): jobs/s, CPU per job, and pickup latency p50/p99 with idle slots
   (bench/peers.py's pickup: one job at a time, 20 ms apart).
3. **memory** (governor only): the USS of one idle worker at ``jobs_per_worker`` 1, 10, 50,
   200: as started, and after 2 x N jobs ran on it at once (every slot used), with plain
   function jobs (threads) and with ``async def`` jobs (tasks), each in a pool of its own.
4. **limits** (governor only): hard-limit fidelity: 2 workers x 50 jobs in flight, every
   job a ``time.sleep(30)`` under ``timeout: {hard: 500ms, grace: 200ms}``, retry max 0.
   Each job's end is the ``at`` of the ``timeout_hard`` error of its last run (Redis's clock
   at the settle, fail.lua); its due end is that run's ``started_at`` (Redis's clock at the
   reserve) + hard + grace; the table gives p50/p99/max of the difference over all trials'
   jobs, the same for the stop itself (the error's ``seconds``: run time until the master
   stopped the job), how many runs each job took until it was dead (a job requeued as the
   neighbour of one killed runs again) and how long each trial took.

How a run is timed (tables 1 and 2): the system is started and warmed up (400 jobs run, and
jobs seen on both worker processes), then every one of its processes is stopped with SIGSTOP,
the --jobs jobs are enqueued with the system's own fastest public call, and the clock starts
as the processes get SIGCONT: a backlog met by warm, idle workers, for every system alike (no
gate job, which prefetching peers would hoard). It stops at the last INCR (for governor at the
last ack). CPU is counted from before the enqueue (so Redis's share of enqueueing counts, as
in bench/peers.py), the enqueuing process's own CPU not.

The peers are not governor's dependencies: on first run they are installed under
``bench/.peers/`` (gitignored), each Python peer in a venv of its own (their redis-py pins
disagree: arq wants < 6, taskiq-redis >= 6), huey into a plain directory the bench imports
(peers.py's Huey runs in the bench's interpreter), BullMQ with ``npm install`` into
``bench/.peers/node``. A peer that cannot be installed or started is skipped with a line
saying why. Versions pinned here (PY_PEERS, HUEY, NODE_PEERS).

Settings, defaults unless said (logging at warning for all):

- **governor async / threads**: ``governor run``, one queue, ``concurrency: 2``,
  ``jobs_per_worker: 50``, ``recycle.max_jobs: off`` (a recycled worker's CPU would leave
  the accounting); handler ``async def`` (a task on the worker's loop) or a plain function (on
  the worker's threads). Every job leased, fenced, recorded, with its own hard limit.
- **BullMQ** (Node, ioredis): 2 ``node`` processes, each one ``Worker`` with ``concurrency:
  50``; jobs added with ``addBulk``; completed jobs kept (the default). Locks renewed per job;
  no job timeout.
- **Dramatiq**: ``dramatiq --processes 2 --threads 50`` (Redis broker; prefetch 2 x threads,
  the default); one ``send()`` per job. Messages acked after the job; time limit 10 min by
  default, enforced by raising in the thread.
- **SAQ**: ``saq --workers 2`` with ``concurrency: 50``; ``enqueue`` per job (gathered).
- **taskiq**: ``taskiq worker --workers 2 --max-async-tasks 50`` on taskiq-redis'
  ``ListQueueBroker`` (BRPOP, no acks: a job whose worker dies is lost), no result backend;
  ``kiq()`` per job (gathered).
- **arq**: 2 processes of ``run_worker`` with ``max_jobs = 50`` (poll_delay 0.5 s, results
  kept 1 h: the defaults); ``enqueue_job`` per job (gathered). A process starts at most
  max_jobs jobs per poll, so its runs are of ARQ_JOBS jobs only (at its rate, --jobs would
  take minutes).
- **Celery gevent**: 2 ``celery worker -P gevent -c 50`` processes (prefetch multiplier 4,
  acks on receipt, no result backend, without gossip/mingle/heartbeat); ``delay()`` per job.
  The gevent pool has no memory or task-count recycling (those are prefork's).

Every Python peer's venv has hiredis, as governor does. governor's processes are its
master, its sentry and the workers. The defaults take about 7 minutes on 2 cores (plus the
peers' install, once).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import peers  # bench/peers.py, beside this file
import psutil
import yaml
from run import Setup, cpu_seconds, pct, wait_for  # bench/run.py

from governor import Client
from governor.ops import control

HERE = Path(__file__).resolve().parent
PEERS_DIR = HERE / ".peers"
WORKERS = 2  # worker processes, every system
SLOTS = 50  # jobs in flight per worker process (table 1)
IO_SECONDS = 0.02
CEILING = WORKERS * SLOTS / IO_SECONDS  # jobs/s
STOP_SECONDS = 30
WARM_JOBS = 400
# arq polls: each process starts at most max_jobs jobs per poll_delay (0.5 s), about 200
# jobs/s for 2; its runs are held to this many jobs to keep the command's time
ARQ_JOBS = 2_000

# pip requirements per Python peer, each in a venv of its own under bench/.peers/<name>
# (hiredis as governor has it; redis-py pinned at what each peer's own pins resolve to)
PY_PEERS = {
    "dramatiq": ["dramatiq[redis]==2.2.1", "redis==8.2.0", "hiredis==3.5.0"],
    # typing_extensions: saq imports it without declaring it
    "saq": ["saq[redis,hiredis]==0.26.4", "redis==7.4.1", "hiredis==3.5.0", "typing_extensions==4.16.0"],
    "taskiq": ["taskiq==0.13.0", "taskiq-redis==1.2.4", "redis==8.2.0", "hiredis==3.5.0"],
    "arq": ["arq==0.28.0", "redis==5.3.1", "hiredis==3.5.0"],
    "celery": ["celery[redis]==5.7.0", "gevent==26.9.0", "redis==8.2.0", "hiredis==3.5.0"],
}
HUEY = ["huey==3.5.4"]  # pip --target bench/.peers/huey: imported by the bench (peers.py's Huey)
NODE_PEERS = {"bullmq": "6.7.0", "ioredis": "5.11.1"}  # npm, into bench/.peers/node
VERSIONED = {"dramatiq": ["dramatiq"], "saq": ["saq"], "taskiq": ["taskiq", "taskiq-redis"],
             "arq": ["arq"], "celery": ["celery", "gevent"]}

# -- the job bodies: appended to bench_tasks (bench/run.py's TASKS and peers.py's gate) ----

IO_TASKS = '''

import asyncio

import redis.asyncio

_aconn = None


def _aredis():
    """One asyncio client per process (each runs one event loop)."""
    global _aconn
    if _aconn is None:
        _aconn = redis.asyncio.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    return _aconn


def io_sync():
    """20 ms of I/O, then one INCR."""
    time.sleep(0.02)
    _redis().incr("bench:counter")


async def io_async():
    await asyncio.sleep(0.02)
    await _aredis().incr("bench:counter")


def pid_sync():
    _redis().sadd("bench:pids", os.getpid())


async def pid_async():
    await _aredis().sadd("bench:pids", os.getpid())
'''

# each peer's module: its app, and ``python peer_x.py enqueue WHAT N`` (the producer)
DRAMATIQ_MODULE = '''
import os
import sys

import dramatiq
from dramatiq.brokers.redis import RedisBroker

import bench_tasks

broker = RedisBroker(url=os.environ["BENCH_REDIS_URL"])
dramatiq.set_broker(broker)
io = dramatiq.actor(actor_name="io", queue_name="bench")(bench_tasks.io_sync)
pid = dramatiq.actor(actor_name="pid", queue_name="bench")(bench_tasks.pid_sync)

if __name__ == "__main__":
    actor = {"io": io, "pid": pid}[sys.argv[2]]
    for _ in range(int(sys.argv[3])):
        actor.send()
'''

SAQ_MODULE = '''
import asyncio
import os
import sys

from saq import Queue

import bench_tasks

queue = Queue.from_url(os.environ["BENCH_REDIS_URL"], name="bench")


async def io(ctx):
    await bench_tasks.io_async()


async def pid(ctx):
    await bench_tasks.pid_async()


settings = {"queue": queue, "functions": [io, pid], "concurrency": 50}


async def enqueue(what, n):
    for i in range(0, n, 500):
        await asyncio.gather(*(queue.enqueue(what) for _ in range(min(500, n - i))))


if __name__ == "__main__":
    asyncio.run(enqueue(sys.argv[2], int(sys.argv[3])))
'''

TASKIQ_MODULE = '''
import asyncio
import os
import sys

from taskiq_redis import ListQueueBroker

import bench_tasks

broker = ListQueueBroker(os.environ["BENCH_REDIS_URL"], queue_name="bench")


@broker.task(task_name="io")
async def io():
    await bench_tasks.io_async()


@broker.task(task_name="pid")
async def pid():
    await bench_tasks.pid_async()


async def enqueue(what, n):
    await broker.startup()
    task = {"io": io, "pid": pid}[what]
    for i in range(0, n, 500):
        await asyncio.gather(*(task.kiq() for _ in range(min(500, n - i))))
    await broker.shutdown()


if __name__ == "__main__":
    asyncio.run(enqueue(sys.argv[2], int(sys.argv[3])))
'''

ARQ_MODULE = '''
import asyncio
import logging
import os
import sys

from arq import create_pool, run_worker
from arq.connections import RedisSettings

import bench_tasks

REDIS = RedisSettings.from_dsn(os.environ["BENCH_REDIS_URL"])


async def io(ctx):
    await bench_tasks.io_async()


async def pid(ctx):
    await bench_tasks.pid_async()


class WorkerSettings:
    functions = [io, pid]
    redis_settings = REDIS
    max_jobs = 50


async def enqueue(what, n):
    pool = await create_pool(REDIS)
    for i in range(0, n, 500):
        await asyncio.gather(*(pool.enqueue_job(what) for _ in range(min(500, n - i))))
    await pool.aclose()


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        logging.basicConfig(level=logging.WARNING)
        run_worker(WorkerSettings)
    else:
        asyncio.run(enqueue(sys.argv[2], int(sys.argv[3])))
'''

CELERY_IO_MODULE = '''
import os
import sys

from celery import Celery

import bench_tasks

app = Celery("peer_celery_io", broker=os.environ["BENCH_REDIS_URL"])
app.conf.update(task_default_queue="bench", result_backend=None,
                broker_connection_retry_on_startup=True)
io = app.task(name="io")(bench_tasks.io_sync)
pid = app.task(name="pid")(bench_tasks.pid_sync)

if __name__ == "__main__":
    task = {"io": io, "pid": pid}[sys.argv[2]]
    for _ in range(int(sys.argv[3])):
        task.delay()
'''

BULLMQ_MODULE = '''
const { Queue, Worker } = require("bullmq");
const IORedis = require("ioredis");
const { setTimeout: sleep } = require("timers/promises");

const url = new URL(process.env.BENCH_REDIS_URL);
const connection = { host: url.hostname, port: Number(url.port) };

async function main() {
  if (process.argv[2] === "worker") {
    const r = new IORedis(connection);
    const worker = new Worker("bench", async (job) => {
      if (job.name === "pid") {
        await r.sadd("bench:pids", process.pid);
      } else {
        await sleep(20);
        await r.incr("bench:counter");
      }
    }, { connection, concurrency: 50 });
    process.on("SIGTERM", async () => {
      await worker.close();
      r.disconnect();
      process.exit(0);
    });
  } else {
    const [what, n] = [process.argv[3], Number(process.argv[4])];
    const queue = new Queue("bench", { connection });
    for (let i = 0; i < n; i += 1000) {
      await queue.addBulk(Array.from({ length: Math.min(1000, n - i) }, () => ({ name: what, data: {} })));
    }
    await queue.close();
  }
}

main().catch((err) => { console.error(err); process.exit(1); });
'''

MODULES = {"peer_dramatiq.py": DRAMATIQ_MODULE, "peer_saq.py": SAQ_MODULE, "peer_taskiq.py": TASKIQ_MODULE,
           "peer_arq.py": ARQ_MODULE, "peer_celery_io.py": CELERY_IO_MODULE, "peer_bullmq.js": BULLMQ_MODULE}


# -- installing the peers -----------------------------------------------------------------

def _tail(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip() and "is ignored" not in ln]
    return lines[-1].strip() if lines else "no output"


def _installed(where: Path, spec: list[str]) -> bool:
    """Whether ``where`` holds exactly ``spec`` (written there after an install succeeded)."""
    try:
        return json.loads((where / "bench-pins.json").read_text()) == spec
    except (OSError, ValueError):
        return False


def _mark(where: Path, spec: list[str]) -> None:
    (where / "bench-pins.json").write_text(json.dumps(spec))


def install_python_peer(name: str) -> tuple[Path | None, str]:
    """(the peer's venv python, '') or (None, why it could not be installed)."""
    venv = PEERS_DIR / name
    python = venv / "bin" / "python"
    if _installed(venv, PY_PEERS[name]) and python.exists():
        return python, ""
    print(f"installing {name} into {venv} ...", file=sys.stderr, flush=True)
    # the venv from the interpreter this bench runs on (the same Python version)
    base = getattr(sys, "_base_executable", sys.executable)
    for argv in ([base, "-m", "venv", "--clear", str(venv)],
                 [str(python), "-m", "pip", "install", "-q", *PY_PEERS[name]]):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"{' '.join(argv[:4])}: {exc}"
        if out.returncode:
            return None, f"pip install {' '.join(PY_PEERS[name])}: {_tail(out.stderr + out.stdout)}"
    _mark(venv, PY_PEERS[name])
    return python, ""


def install_huey() -> str:
    """Puts huey where this bench imports it from (and its consumer, which runs on this
    interpreter too); '' or why not."""
    where = PEERS_DIR / "huey"
    if not _installed(where, HUEY):
        print(f"installing huey into {where} ...", file=sys.stderr, flush=True)
        try:
            out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--upgrade", "--no-deps",
                                  "--target", str(where), *HUEY], capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"pip install {' '.join(HUEY)}: {exc}"
        if out.returncode:
            return f"pip install {' '.join(HUEY)}: {_tail(out.stderr + out.stdout)}"
        _mark(where, HUEY)
    sys.path.append(str(where))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(where)) if p)
    return ""


def install_node() -> tuple[Path | None, str]:
    """(bench/.peers/node/node_modules, '') or (None, why not)."""
    where = PEERS_DIR / "node"
    spec = [f"{k}@{v}" for k, v in NODE_PEERS.items()]
    if _installed(where, spec) and (where / "node_modules" / "bullmq").exists():
        return where / "node_modules", ""
    for tool in ("node", "npm"):
        if subprocess.run(["which", tool], capture_output=True).returncode:
            return None, f"no {tool} on this machine"
    print(f"installing {', '.join(spec)} into {where} ...", file=sys.stderr, flush=True)
    where.mkdir(parents=True, exist_ok=True)
    (where / "package.json").write_text(json.dumps({"private": True, "dependencies": NODE_PEERS}))
    try:
        out = subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=where, capture_output=True,
                             text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"npm install: {exc}"
    if out.returncode:
        return None, f"npm install {' '.join(spec)}: {_tail(out.stderr + out.stdout)}"
    _mark(where, spec)
    return where / "node_modules", ""


def python_versions(python: Path, dists: list[str]) -> str:
    code = ("import importlib.metadata as m, sys\n"
            "print(', '.join(f'{d} {m.version(d)}' for d in sys.argv[1:] + ['redis']))")
    out = subprocess.run([str(python), "-c", code, *dists], capture_output=True, text=True)
    return out.stdout.strip() or "?"


# -- the systems of table 1 ---------------------------------------------------------------

class IOSystem:
    """One system running the I/O-bound job on the bench's redis-server."""

    name = ""
    jobs_cap = 0  # at most this many jobs per run (0: --jobs)

    def __init__(self, s: Setup) -> None:
        self.s = s

    def version(self) -> str:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def enqueue(self, what: str, n: int) -> None:
        """``n`` jobs of ``what`` (io or pid) through the system's fastest public call."""
        raise NotImplementedError

    def processes(self) -> list[psutil.Process]:
        raise NotImplementedError

    def drained(self, n: int) -> Callable[[], bool]:
        """Whether a run of n jobs is over, once its n INCRs are done."""
        return lambda: True

    def stop(self) -> None:
        raise NotImplementedError

    def log_tail(self) -> str:
        return ""


class GovernorIO(IOSystem):
    """governor with ``jobs_per_worker`` slots; ``kind`` async (``async def``) or threads."""

    def __init__(self, s: Setup, kind: str, slots: int) -> None:
        super().__init__(s)
        self.kind, self.slots = kind, slots
        self.name = f"governor {kind}"
        self.trial = 0
        self.client: Client | None = None

    def version(self) -> str:
        import governor
        return governor.__version__

    def start(self) -> None:
        self.trial += 1
        prefix = f"io{self.kind}{self.trial}"
        self.s.start_master(prefix, WORKERS, recycle={"max_jobs": "off"}, **slots_key(self.slots))
        self.client = Client.from_url(self.s.url, prefix=prefix)

    def enqueue(self, what: str, n: int) -> None:
        assert self.client is not None
        handler = f"bench_tasks:{what}_{'async' if self.kind == 'async' else 'sync'}"
        for i in range(0, n, 10_000):
            self.client.enqueue_many("bench", [{"handler": handler}] * min(10_000, n - i))

    def processes(self) -> list[psutil.Process]:
        return tree([self.s.master.pid] if self.s.master else [])

    def drained(self, n: int) -> Callable[[], bool]:
        assert self.client is not None
        c = self.client
        goal = c.counts("bench")["done_total"] + n
        return lambda: c.counts("bench")["done_total"] >= goal

    def stop(self) -> None:
        try:
            self.s.stop_master()
        finally:
            self.s.master = None


class Peer(IOSystem):
    """A peer run from bench/.peers: ``workers`` are the argv of its root processes (each in
    a session of its own), ``producer`` the argv that enqueues (``what`` and ``n`` appended)."""

    def __init__(self, s: Setup, name: str, version: str, workers: list[list[str]], producer: list[str],
                 env: dict[str, str] | None = None) -> None:
        super().__init__(s)
        self.name, self._version = name, version
        self.workers, self.producer = workers, producer
        self.env = dict(os.environ, BENCH_REDIS_URL=s.url, PYTHONPATH=str(s.workdir), **(env or {}))
        self.procs: list[subprocess.Popen] = []

    def version(self) -> str:
        return self._version

    def start(self) -> None:
        with open(self.s.workdir / f"{self.name}.log", "ab") as log:
            for argv in self.workers:
                self.procs.append(subprocess.Popen(argv, cwd=self.s.workdir, env=self.env, stdin=subprocess.DEVNULL,
                                                   stdout=log, stderr=log, start_new_session=True))

    def enqueue(self, what: str, n: int) -> None:
        out = subprocess.run([*self.producer, what, str(n)], cwd=self.s.workdir, env=self.env,
                             capture_output=True, text=True, timeout=300)
        if out.returncode:
            raise SystemExit(f"bench: {self.name}'s producer failed: {_tail(out.stderr + out.stdout)}")

    def processes(self) -> list[psutil.Process]:
        return tree([p.pid for p in self.procs if p.poll() is None])

    def stop(self) -> None:
        """SIGTERM to each root's process group (as a service manager stops it), SIGKILL to
        whatever is left after STOP_SECONDS."""
        procs = self.processes()
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        psutil.wait_procs(procs, timeout=STOP_SECONDS)
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        for p in self.procs:
            p.wait(10)
        self.procs = []

    def log_tail(self) -> str:
        path = self.s.workdir / f"{self.name}.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


def tree(pids: list[int]) -> list[psutil.Process]:
    """The processes and all their descendants."""
    out: list[psutil.Process] = []
    for pid in pids:
        try:
            root = psutil.Process(pid)
            out += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return out


def chosen(name: str, only: list[str]) -> bool:
    """Whether --systems lets ``name`` run (any of its words in the name; all if none)."""
    return not only or any(w in name.lower() for w in only)


def python_peers(s: Setup, only: list[str]) -> tuple[list[IOSystem], dict[str, str]]:
    """The peers of table 1 that could be installed, and why each other one was skipped
    (those --systems leaves out are neither installed nor named)."""
    systems: list[IOSystem] = []
    skipped: dict[str, str] = {}
    node_modules, why = install_node() if chosen("bullmq", only) else (None, "")
    if node_modules is None:
        if why:
            skipped["BullMQ"] = why
    else:
        script = str(s.workdir / "peer_bullmq.js")
        vers = ", ".join(f"{k} {json.loads((node_modules / k / 'package.json').read_text())['version']}"
                         for k in NODE_PEERS)
        systems.append(Peer(s, "BullMQ", f"{vers}, node {subprocess.check_output(['node', '--version'], text=True).strip()}",
                            [["node", script, "worker"]] * WORKERS, ["node", script, "enqueue"],
                            env={"NODE_PATH": str(node_modules)}))
    for name in PY_PEERS:
        if not chosen(name, only):
            continue
        python, why = install_python_peer(name)
        if python is None:
            skipped[name] = why
            continue
        bin_ = python.parent
        cap = 0
        version = python_versions(python, VERSIONED[name])
        if name == "dramatiq":
            workers = [[str(bin_ / "dramatiq"), "peer_dramatiq", "--processes", str(WORKERS),
                        "--threads", str(SLOTS)]]
            label, producer = "Dramatiq threads", [str(python), "peer_dramatiq.py", "enqueue"]
        elif name == "saq":
            workers = [[str(bin_ / "saq"), "peer_saq.settings", "--workers", str(WORKERS)]]
            label, producer = "SAQ", [str(python), "peer_saq.py", "enqueue"]
        elif name == "taskiq":
            workers = [[str(bin_ / "taskiq"), "worker", "peer_taskiq:broker", "--workers", str(WORKERS),
                        "--max-async-tasks", str(SLOTS), "--log-level", "WARNING"]]
            label, producer = "taskiq", [str(python), "peer_taskiq.py", "enqueue"]
        elif name == "arq":
            workers = [[str(python), "peer_arq.py", "worker"]] * WORKERS
            label, producer = "arq", [str(python), "peer_arq.py", "enqueue"]
            cap = ARQ_JOBS
        else:
            workers = [[str(bin_ / "celery"), "-A", "peer_celery_io", "worker", "-P", "gevent", "-c", str(SLOTS),
                        "-n", f"bench{i}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
                        "-l", "warning"] for i in range(WORKERS)]
            label, producer = "Celery gevent", [str(python), "peer_celery_io.py", "enqueue"]
        systems.append(Peer(s, label, version, workers, producer))
        systems[-1].jobs_cap = cap
    return systems, skipped


# -- measuring ----------------------------------------------------------------------------

def slots_key(slots: int) -> dict:
    """The queue's ``jobs_per_worker`` setting (none at 1, the default: a governor from before
    the key still runs the rows at 1)."""
    return {} if slots == 1 else {"jobs_per_worker": slots}


def governor_refuses(s: Setup, **queue: object) -> str:
    """Why ``governor check`` refuses a queue with these settings ('' if it takes them)."""
    cfg = {"redis": {"url": s.url, "prefix": "check"}, "queues": {"bench": {"concurrency": WORKERS, **queue}}}
    path = s.workdir / "check.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = subprocess.run([sys.executable, "-m", "governor", "check", "-c", str(path)], capture_output=True, text=True)
    return "" if out.returncode == 0 else f"governor check refuses it: {_tail(out.stderr + out.stdout)}"


class USSSampler:
    """The largest USS sum over ``procs``, sampled every ``interval`` s in a thread."""

    def __init__(self, procs: list[psutil.Process], interval: float = 0.1) -> None:
        self.procs, self.interval = procs, interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        total = 0
        for p in self.procs:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                total += p.memory_full_info().uss
        self.peak = max(self.peak, total)
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> USSSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def signal_all(procs: list[psutil.Process], sig: int) -> None:
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(sig)


def counter(s: Setup) -> int:
    return int(s.redis.get("bench:counter") or 0)


def timed_run(s: Setup, procs: list[psutil.Process], n: int, enqueue: Callable[[], None],
              drained: Callable[[int], Callable[[], bool]], what: str) -> tuple[float, float, float]:
    """(jobs/s, CPU ms per job, peak USS MiB): the system's processes stopped, n jobs enqueued,
    the processes continued; timed until the n-th INCR (and ``drained``)."""
    s.redis.delete("bench:counter")
    done = drained(n)
    counted = [*procs, *s.servers()]
    signal_all(procs, signal.SIGSTOP)
    try:
        cpu0 = cpu_seconds(counted)
        enqueue()
    finally:
        with USSSampler(procs) as uss:
            t0 = time.perf_counter()
            signal_all(procs, signal.SIGCONT)
            wait_for(lambda: counter(s) >= n, 600, what, interval=0.005)
            wait_for(done, 30, f"{what}: the last acks", interval=0.002)
            elapsed = time.perf_counter() - t0
            cpu = cpu_seconds(counted) - cpu0
    s.redis.delete("bench:counter")
    return n / elapsed, cpu / n * 1000, uss.peak / 2**20


def warm_io(sys_: IOSystem) -> None:
    """Until WARM_JOBS jobs have run and jobs have run on both worker processes."""
    r = sys_.s.redis
    r.delete("bench:counter", "bench:pids")
    for attempt in range(5):
        sys_.enqueue("io", WARM_JOBS)
        sys_.enqueue("pid", 100)
        wait_for(lambda a=attempt: counter(sys_.s) >= WARM_JOBS * (a + 1), 120, f"{sys_.name}'s warm-up jobs")
        deadline = time.monotonic() + 5
        while r.scard("bench:pids") < WORKERS and time.monotonic() < deadline:
            time.sleep(0.05)
        if r.scard("bench:pids") >= WORKERS:
            break
    else:
        raise SystemExit(f"bench: {sys_.name}: jobs ran on {r.scard('bench:pids')} of {WORKERS} processes")
    time.sleep(0.5)
    r.delete("bench:counter", "bench:pids")


def io_trial(sys_: IOSystem, n: int) -> dict[str, float]:
    s = sys_.s
    n = min(n, sys_.jobs_cap or n)
    s.redis.flushall()
    try:
        sys_.start()
        warm_io(sys_)
        procs = sys_.processes()
        rate, cpu, uss = timed_run(s, procs, n, lambda: sys_.enqueue("io", n), sys_.drained, f"{sys_.name}'s run")
        return {"rate": rate, "cpu_ms": cpu, "uss_mib": uss, "procs": len(procs)}
    finally:
        sys_.stop()
        s.redis.flushall()


def run_io(s: Setup, args: argparse.Namespace) -> list[str]:
    systems: list[IOSystem] = []
    skipped: dict[str, str] = {}
    versions: dict[str, str] = {}
    refuse = governor_refuses(s, **slots_key(args.slots))
    for kind in ("async", "threads"):
        if not chosen(f"governor {kind}", args.systems):
            continue
        why = refuse
        if not why and kind == "async" and args.slots == 1:
            why = "async def handlers run only with jobs_per_worker > 1 (at 1 the coroutine is never awaited)"
        if why:
            skipped[f"governor {kind}"] = why
        else:
            systems.append(GovernorIO(s, kind, args.slots))
    peer_systems, peer_skipped = python_peers(s, args.systems)
    systems = [x for x in systems + peer_systems if chosen(x.name, args.systems)]
    skipped.update(peer_skipped)
    results: dict[str, list[dict[str, float]]] = {x.name: [] for x in systems}
    failed: dict[str, str] = {}
    for r in range(args.repeat):
        for sys_ in systems:
            if sys_.name in failed:
                continue
            print(f"io trial {r + 1}/{args.repeat}: {sys_.name}", file=sys.stderr, flush=True)
            try:
                res = io_trial(sys_, args.jobs)
            except SystemExit as exc:
                failed[sys_.name] = str(exc)
                print(f"  FAILED: {exc}\n{sys_.log_tail()}", file=sys.stderr, flush=True)
                continue
            results[sys_.name].append(res)
            print("  " + ", ".join(f"{k} {v:,.3g}" for k, v in res.items()), file=sys.stderr, flush=True)
    for sys_ in systems:
        versions[sys_.name] = sys_.version()
    head = ["system", "processes", "jobs/s", "% of ceiling", "CPU per job", "USS, all processes (peak)"]
    rows = [head]
    meds: dict[str, dict[str, float]] = {}
    for sys_ in systems:
        if sys_.name in failed or not results[sys_.name]:
            continue
        med = meds[sys_.name] = {k: statistics.median(t[k] for t in results[sys_.name])
                                 for k in results[sys_.name][0]}
        others = int(med["procs"]) - WORKERS
        name = sys_.name + (f" ({sys_.jobs_cap:,} jobs)" if 0 < sys_.jobs_cap < args.jobs else "")
        rows.append([name, f"{WORKERS}" + (f" (+{others})" if others else ""), f"{med['rate']:,.0f}",
                     f"{med['rate'] / CEILING:.0%}", f"{med['cpu_ms']:.3f} ms", f"{med['uss_mib']:.1f} MiB"])
    out = [f"I/O-bound: {WORKERS * SLOTS} jobs in flight over {WORKERS} processes, each 20 ms of I/O then one "
           f"INCR; {args.jobs:,} jobs; ceiling {CEILING:,.0f} jobs/s; median of {args.repeat}",
           "(processes: the worker processes, + any others of the system: its master, parent...)",
           *format_table(rows, left=1)]
    out += io_targets(meds)
    out += [f"versions: {name}: {v}" for name, v in versions.items() if not name.startswith("governor")]
    out += [f"skipped {name}: {why}" for name, why in skipped.items()]
    out += [f"failed {name}: {why}" for name, why in failed.items()]
    return out


def io_targets(meds: dict[str, dict[str, float]]) -> list[str]:
    """Issue 23's targets for table 1: jobs/s >= the best peer's, CPU per job <= BullMQ's,
    USS <= 0.6 x BullMQ's."""
    peers_ = {k: v for k, v in meds.items() if not k.startswith("governor")}
    out = []
    for name, m in meds.items():
        if not name.startswith("governor") or not peers_:
            continue
        best = max(peers_, key=lambda k: peers_[k]["rate"])
        parts = [f"jobs/s {m['rate'] / peers_[best]['rate']:.2f}x {best}'s (target >= 1)"]
        bull = peers_.get("BullMQ")
        if bull:
            parts += [f"CPU per job {m['cpu_ms'] / bull['cpu_ms']:.2f}x BullMQ's (target <= 1)",
                      f"USS {m['uss_mib'] / bull['uss_mib']:.2f}x BullMQ's (target <= 0.6)"]
        out.append(f"{name}: " + ", ".join(parts))
    return out


def format_table(rows: list[list[str]], left: int) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            for r in rows]


# -- table 2: the no-op drain against huey ------------------------------------------------

class GovernorSlots(peers.Governor):
    """peers.py's governor with ``jobs_per_worker`` slots in each of its 2 workers."""

    def __init__(self, s: Setup, slots: int) -> None:
        super().__init__(s)
        self.slots = slots
        self.name = f"governor x{slots}"

    def start(self) -> None:
        self.trial += 1
        prefix = f"slots{self.slots}-{self.trial}"
        self.s.start_master(prefix, WORKERS, recycle={"max_jobs": "off"}, **slots_key(self.slots))
        assert self.s.master is not None
        self.root = psutil.Process(self.s.master.pid)
        self.client = Client.from_url(self.s.url, prefix=prefix)

    def drained(self, n: int) -> Callable[[], bool]:
        assert self.client is not None
        c = self.client
        goal = c.counts("bench")["done_total"] + n
        return lambda: c.counts("bench")["done_total"] >= goal


def drain_trial(sys_: peers.System, args: argparse.Namespace) -> dict[str, float]:
    """The drain, then the pickup latency (inf if its samples did not all come in time)."""
    s = sys_.s
    sys_.reset()
    try:
        sys_.start()
        peers.warm_up(sys_)
        rate, cpu, _ = timed_run(s, sys_.processes(), args.jobs, lambda: sys_.enqueue_drain(args.jobs),
                                 sys_.drained, f"{sys_.name}'s drain")
        time.sleep(0.5)
        try:
            lat = peers.pickup(sys_, args.pickups + 1)
        except SystemExit as exc:
            print(f"  pickup: {exc}", file=sys.stderr, flush=True)
            lat = [math.inf]
        return {"rate": rate, "cpu_ms": cpu, "p50": pct(lat, 50), "p99": pct(lat, 99)}
    finally:
        sys_.stop()
        sys_.reset()


def ms(x: float) -> str:
    return f"{x:.2f} ms" if math.isfinite(x) else "timed out"


def run_drain(s: Setup, args: argparse.Namespace) -> list[str]:
    systems: list[peers.System] = []
    skipped: dict[str, str] = {}
    for slots in args.drain_slots:
        if not chosen(f"governor x{slots}", args.systems):
            continue
        why = governor_refuses(s, **slots_key(slots))
        if why:
            skipped[f"governor x{slots}"] = why
        else:
            systems.append(GovernorSlots(s, slots))
    why = install_huey() if chosen("huey", args.systems) else ""
    if not why and chosen("huey", args.systems):
        try:
            systems.append(peers.Huey(s))
        except ImportError as exc:
            why = str(exc)
    if why:
        skipped["huey"] = why
    results: dict[str, list[dict[str, float]]] = {x.name: [] for x in systems}
    failed: dict[str, str] = {}
    for r in range(args.repeat):
        for sys_ in systems:
            if sys_.name in failed:
                continue
            print(f"drain trial {r + 1}/{args.repeat}: {sys_.name}", file=sys.stderr, flush=True)
            try:
                res = drain_trial(sys_, args)
            except SystemExit as exc:
                failed[sys_.name] = str(exc)
                print(f"  FAILED: {exc}", file=sys.stderr, flush=True)
                continue
            results[sys_.name].append(res)
            print("  " + ", ".join(f"{k} {v:,.3g}" for k, v in res.items()), file=sys.stderr, flush=True)
    systems = [x for x in systems if results[x.name]]
    med = {x.name: {k: statistics.median(t[k] for t in results[x.name]) for k in results[x.name][0]}
           for x in systems}
    huey = med.get("huey")
    head = ["system", "jobs per worker", "drain", "CPU per job", "pickup p50", "pickup p99",
            "drain / huey's", "CPU / huey's"]
    rows = [head]
    for x in systems:
        m = med[x.name]
        per = str(getattr(x, "slots", 1))
        rows.append([x.name, per, f"{m['rate']:,.0f} jobs/s", f"{m['cpu_ms']:.3f} ms", ms(m["p50"]), ms(m["p99"]), f"{m['rate'] / huey['rate']:.2f}x" if huey else "-",
                     f"{m['cpu_ms'] / huey['cpu_ms']:.2f}x" if huey else "-"])
    out = [f"No-op drain (each job one INCR), {WORKERS} processes, {args.jobs:,} jobs; pickup: {args.pickups} "
           f"jobs one at a time on idle slots; median of {args.repeat}", *format_table(rows, left=1)]
    out.append("versions: " + ", ".join(f"{x.name} {x.version()}" for x in systems if x.name.startswith("huey")))
    out += [f"skipped {name}: {why}" for name, why in skipped.items()]
    out += [f"failed {name}: {why}" for name, why in failed.items()]
    return out


# -- table 3: a worker's idle memory ------------------------------------------------------

def worker_uss(s: Setup) -> float:
    """The USS (MiB) of the master's one worker, as its status names it."""
    workers = control.request(str(s.workdir / "state"), "status")["pools"][0]["workers"]
    if len(workers) != 1:
        raise SystemExit(f"bench: expected one worker, found {len(workers)}")
    return psutil.Process(workers[0]["pid"]).memory_full_info().uss / 2**20


def memory_one(s: Setup, slots: int, kind: str, prefix: str) -> tuple[float, float]:
    """(USS MiB of the one worker as started, idle; after 2 x slots jobs ran on it at once)."""
    s.redis.flushall()
    s.start_master(prefix, 1, recycle={"max_jobs": "off"}, **slots_key(slots))
    try:
        time.sleep(1)
        fresh = worker_uss(s)
        c = Client.from_url(s.url, prefix=prefix)
        handler = f"bench_tasks:io_{'async' if kind == 'async' else 'sync'}"
        n = 2 * slots
        c.enqueue_many("bench", [{"handler": handler}] * n)
        wait_for(lambda: c.counts("bench")["done_total"] >= n, 120, f"{n} {kind} jobs")
        time.sleep(1)
        used = worker_uss(s) if counter(s) == n else math.nan  # nan: done, but the body never ran
    finally:
        s.stop_master()
        s.redis.flushall()
    return fresh, used


def run_memory(s: Setup, args: argparse.Namespace) -> list[str]:
    rows = [["jobs_per_worker", "threads: started", "threads: after 2N jobs", "async: started",
             "async: after 2N jobs"]]
    skipped: list[str] = []
    notes: list[str] = []
    can_async = not governor_refuses(s, jobs_per_worker=2)
    for slots in args.memory_slots:
        why = governor_refuses(s, **slots_key(slots))
        if why:
            skipped.append(f"skipped jobs_per_worker {slots}: {why}")
            continue
        row = [str(slots)]
        for kind in ("threads", "async"):
            if kind == "async" and not can_async:
                row += ["-", "-"]
                continue
            print(f"memory: {slots} slots, {kind}", file=sys.stderr, flush=True)
            fresh, used = memory_one(s, slots, kind, f"mem{kind}{slots}")
            if math.isnan(used):
                notes.append(f"jobs_per_worker {slots}, async: the jobs ended done but their bodies never ran "
                             "(the coroutine was not awaited)")
            row += [f"{fresh:.1f} MiB", "not run" if math.isnan(used) else f"{used:.1f} MiB"]
        rows.append(row)
    return ["USS of one idle governor worker (psutil), as started and after 2 x jobs_per_worker jobs ran on it "
            "at once (every slot used), 1 s idle", *format_table(rows, left=0), *skipped, *notes]


# -- table 4: hard-limit fidelity ---------------------------------------------------------

HARD, GRACE = 0.5, 0.2


@dataclass
class Limits:
    """One or more trials of table 4, pooled."""

    settle: list[float] = field(default_factory=list)  # ms past the due end, per job
    stop: list[float] = field(default_factory=list)
    runs: list[int] = field(default_factory=list)  # runs per job until it was dead
    asked: int = 0
    seconds: list[float] = field(default_factory=list)  # per trial: enqueue to the last job dead
    before: Counter = field(default_factory=Counter)  # the reasons of the runs before the last


def limits_trial(s: Setup, slots: int, grace: bool, prefix: str, out: Limits) -> None:
    """WORKERS x slots jobs, all stuck past their hard limit, retry max 0."""
    timeout = {"soft": "off", "hard": f"{HARD * 1000:.0f}ms", **({"grace": f"{GRACE * 1000:.0f}ms"} if grace else {})}
    s.start_master(prefix, WORKERS, timeout=timeout, retry={"max": 0}, recycle={"max_jobs": "off"},
                   **slots_key(slots))
    c = Client.from_url(s.url, prefix=prefix)
    n = WORKERS * slots
    try:
        t0 = time.perf_counter()
        ids = c.enqueue_many("bench", [{"handler": "bench_tasks:sleep", "args": [30]}] * n)
        wait_for(lambda: c.counts("bench")["dead"] >= n, 120, "the hard-limit kills", interval=0.05)
        out.seconds.append(time.perf_counter() - t0)
    finally:
        s.stop_master()
    due = HARD + (GRACE if grace else 0)
    other: Counter = Counter()
    for i in ids:
        job = c.job(i, "bench") or {}
        errors = job.get("errors") or [{}]
        e = errors[-1]  # the run that ended it (any before it: requeued)
        out.runs.append(len(errors))
        out.before.update(str(x.get("reason")) for x in errors[:-1])
        if e.get("reason") != "timeout_hard" or "started_at" not in job:
            other[f"{job.get('state')} {e.get('reason')}"] += 1
            continue
        out.settle.append((e["at"] / 1000 - job["started_at"] - due) * 1000)
        out.stop.append((e["seconds"] - due) * 1000)
    out.asked += n
    s.redis.flushall()
    if other:
        print(f"  jobs not ended by timeout_hard (state, reason): {dict(other)}", file=sys.stderr, flush=True)


def run_limits(s: Setup, args: argparse.Namespace) -> list[str]:
    grace = not governor_refuses(s, timeout={"soft": "off", "hard": "500ms", "grace": "200ms"})
    why = governor_refuses(s, **slots_key(args.slots))
    if why:
        return [f"hard-limit fidelity: skipped: {why}"]
    res = Limits()
    for r in range(args.repeat):
        print(f"limits trial {r + 1}/{args.repeat}", file=sys.stderr, flush=True)
        limits_trial(s, args.slots, grace, f"lim{r}", res)
    settle, stop = sorted(res.settle), sorted(res.stop)
    due = f"hard {HARD * 1000:.0f} ms + grace {GRACE * 1000:.0f} ms" if grace else \
        f"hard {HARD * 1000:.0f} ms (this governor has no timeout.grace)"
    rows = [["measure", "p50", "p99", "max"]]
    for label, xs in (("job settled dead, after its due end", settle), ("job stopped, after its due end", stop)):
        if xs:
            rows.append([label, f"{pct(xs, 50):.1f} ms", f"{pct(xs, 99):.1f} ms", f"{xs[-1]:.1f} ms"])
    runs = sorted(res.runs)
    rows.append(["runs per job until dead", f"{pct(runs, 50)}", f"{pct(runs, 99)}", f"{runs[-1]}"])
    out = [f"Hard-limit fidelity: {WORKERS} workers x {args.slots} jobs in flight, each sleeping past {due}, "
           f"retry max 0; {len(settle)} of {res.asked} jobs ended timeout_hard over {args.repeat} trials",
           "(due end: the last run's started_at + hard + grace; settled: its error's at; stopped: its error's "
           "seconds)", *format_table(rows, left=1),
           f"each trial, from the enqueue to the last job dead: {', '.join(f'{x:.1f} s' for x in res.seconds)}"]
    if res.before:
        out.append("the runs before the last ended: " + ", ".join(f"{k} x{v}" for k, v in res.before.most_common()))
    return out


# -- main ---------------------------------------------------------------------------------

GROUPS = ("io", "drain", "memory", "limits")


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def groups(text: str) -> tuple[str, ...]:
    chosen = tuple(g.strip() for g in text.split(",") if g.strip())
    if not chosen or any(g not in GROUPS for g in chosen):
        raise argparse.ArgumentTypeError(f"expected some of {', '.join(GROUPS)} (comma-separated)")
    return chosen


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=10_000, help="jobs per timed run (tables 1 and 2)")
    ap.add_argument("--repeat", type=int, default=3, help="trials; each figure is their median")
    ap.add_argument("--pickups", type=int, default=200, help="pickup latency samples (table 2)")
    ap.add_argument("--slots", type=int, default=SLOTS,
                    help="governor's jobs_per_worker in tables 1 and 4 (the peers run 50 regardless)")
    ap.add_argument("--drain-slots", type=int_list, default=[1, 16, 50], help="governor's rows in table 2")
    ap.add_argument("--memory-slots", type=int_list, default=[1, 10, 50, 200], help="table 3's rows")
    ap.add_argument("--only", type=groups, default=GROUPS, help=f"some of {', '.join(GROUPS)}")
    ap.add_argument("--systems", type=lambda t: [w.strip().lower() for w in t.split(",") if w.strip()],
                    default=[], help="tables 1 and 2: only the systems whose name has one of these words "
                    "(comma-separated, e.g. governor,bullmq)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out: list[str] = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="governor-inflight-") as tmp:
        workdir = Path(tmp)
        s = Setup(workdir)
        try:
            peers.write_modules(workdir)  # bench_tasks (run.py's TASKS + the gate), peer_huey, peer_celery
            with open(workdir / "bench_tasks.py", "a") as fh:
                fh.write(textwrap.dedent(IO_TASKS))
            for name, text in MODULES.items():
                (workdir / name).write_text(text)
            os.environ["BENCH_REDIS_URL"] = s.url  # for the modules the bench imports (huey's)
            sys.path.insert(0, str(workdir))
            steps = {"io": run_io, "drain": run_drain, "memory": run_memory, "limits": run_limits}
            for g in GROUPS:
                if g in args.only:
                    out += ["", *steps[g](s, args)]
        finally:
            s.close()
    print(f"\ninflight bench: {os.cpu_count()} cores, redis {peers.redis_version()}, Python "
          f"{sys.version.split()[0]}, governor {peers.Governor.version(None)}; {time.monotonic() - t0:.0f} s")  # type: ignore[arg-type]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
