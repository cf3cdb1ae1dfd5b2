"""Issue 23: several jobs in flight per worker (``jobs_per_worker``), each governed on its own.

Real `governor run` masters on a real redis-server; handlers (tests/apps/inflight.py) run on a
worker's threads or as tasks on its event loop, and record what ran in files or in Redis; the
kills are real signals. Every wait is bounded."""

from __future__ import annotations

import collections
import json
import os
import signal
import time
import uuid

import psutil
import pytest
import redis
import yaml

from fleet import Fleet
from harness import Governor, cli, dead_lettered, wait_for


def start(governor: Governor, queues: dict, **top) -> Governor:
    governor.add_app("inflight")
    return governor.start(queues, **top)


def records(governor: Governor, ids: list[str], queue: str) -> list[dict]:
    return [governor.client.job(i, queue) for i in ids]


def all_done(governor: Governor, ids: list[str], queue: str, timeout: float, what: str) -> list[dict]:
    """The records of ``ids`` once every one is done (fails at once if one is dead-lettered)."""
    def check() -> list[dict] | None:
        recs = records(governor, ids, queue)
        dead = [r for r in recs if r and r["state"] == "dead"]
        assert not dead, f"dead-lettered: {dead}"
        return recs if all(r and r["state"] == "done" for r in recs) else None
    return wait_for(check, timeout, what, interval=0.05)


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The most spans (start, end) open at one instant."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    worst = running = 0
    for _, step in events:
        running += step
        worst = max(worst, running)
    return worst


def lines(governor: Governor, kind: str) -> list[list[str]]:
    path = governor.records / kind
    return [ln.split() for ln in path.read_text().splitlines()] if path.exists() else []


def worker_pids(governor: Governor, queue: str) -> set[int]:
    return {w["pid"] for w in governor.workers(queue)}


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# -- 1, 2: jobs really overlap, and each knows itself ----------------------------------------

def test_async_and_threaded_jobs_overlap_in_two_processes(governor):
    """100 jobs of 0.5 s on 2 workers x 25 slots, half `async def`, half plain: far below the
    serial 25 s per process, and only the 2 worker processes ran them."""
    start(governor, {"io": {"concurrency": 2, "jobs_per_worker": 25}})
    workers = worker_pids(governor, "io")
    t0 = time.monotonic()
    ids = governor.client.enqueue_many("io", [
        {"handler": "inflight:anap" if i % 2 else "inflight:nap", "args": [f"j{i}", 0.5]} for i in range(100)])
    recs = all_done(governor, ids, "io", 20, "100 jobs")
    elapsed = time.monotonic() - t0
    assert elapsed < 6, f"100 jobs of 0.5 s on 2 x 25 slots took {elapsed:.1f}s"
    assert {r["result"] for r in recs} == workers and len(workers) == 2
    assert all(r["attempts"] == 1 and not r["errors"] for r in recs)
    # both kinds ran side by side in one process (a worker's threads and its event loop)
    spans = collections.defaultdict(list)
    for key, pid, t in lines(governor, "start"):
        spans[(int(pid), int(key[1:]) % 2)].append(float(t))
    assert all(len(spans[(pid, kind)]) > 0 for pid in workers for kind in (0, 1)), dict(spans)
    by_key = {}
    for kind in ("start", "done"):
        for key, _pid, t in lines(governor, kind):
            by_key.setdefault(key, []).append(float(t))
    assert max_overlap([tuple(v) for v in by_key.values()]) >= 40
    assert set(worker_pids(governor, "io")) == workers  # nothing was replaced


def test_current_job_answers_per_task_and_per_thread(governor):
    """Each job asks `current_job().id` before and after a wait during which its neighbours run
    (threads and tasks mixed in one worker): each gets its own id both times."""
    start(governor, {"io": {"concurrency": 1, "jobs_per_worker": 20}})
    ids = governor.client.enqueue_many("io", [
        {"handler": "inflight:awhoami" if i % 2 else "inflight:whoami", "args": [0.4]} for i in range(40)])
    recs = all_done(governor, ids, "io", 20, "40 jobs")
    for job_id, rec in zip(ids, recs, strict=True):
        assert rec["result"] == [job_id, job_id], (rec["handler"], rec["result"])
    # they did run side by side (one job per process would not show a mix-up)
    assert max_overlap([(r["started_at"], r["finished_at"]) for r in recs]) >= 10


# -- 3, 4: a hard limit stops its job; the neighbours are not charged -------------------------

def test_a_stuck_thread_past_hard_and_grace_kills_its_worker_and_its_neighbours_go_back_uncharged(governor):
    start(governor, {"t": {"concurrency": 1, "jobs_per_worker": 6, "retry": {"max": 0},
                           "timeout": {"soft": "off", "hard": "1s", "grace": "500ms"}}})
    [worker] = worker_pids(governor, "t")
    neighbours = [f"n{i}" for i in range(5)]
    ids = governor.client.enqueue_many("t", [{"handler": "inflight:stuck", "args": ["stuck"]}] + [
        {"handler": "inflight:long_first_run", "args": [k, 10, 0.1], "timeout": "30s"} for k in neighbours])
    stuck, others = ids[0], ids[1:]
    rec = dead_lettered(governor.client, stuck, 10)
    assert rec["reason"] == "timeout_hard" and rec["attempts"] == 1
    [err] = rec["errors"]
    assert err["reason"] == "timeout_hard"
    # killed at hard + grace (1.5 s), not at the hard limit alone, and not much later
    assert 1.5 - 0.05 <= err["seconds"] < 2.5, err
    recs = all_done(governor, others, "t", 10, "the 5 neighbours")
    for rec in recs:
        assert rec["attempts"] == 1 and rec["result"] == "slept", rec  # not charged (retry.max 0)
        [err] = rec["errors"]
        assert err["reason"] == "neighbour_killed", err
        assert "not charged" in err["error"], err
    starts = collections.Counter(k for k, *_ in lines(governor, "start"))
    assert starts == {"stuck": 1, **{k: 2 for k in neighbours}}
    first = {k: int(pid) for k, pid, _ in reversed(lines(governor, "start"))}  # first run's pid
    assert all(first[k] == worker for k in neighbours + ["stuck"])  # side by side in one worker
    # each neighbour's first run was still running at the kill: it never finished
    done = collections.Counter(k for k, *_ in lines(governor, "done"))
    assert done == {k: 1 for k in neighbours}
    wait_for(lambda: gone(worker), 5, "the killed worker to be gone")
    new = governor.wait_workers("t", 1)
    assert new[0]["pid"] != worker
    assert "timeout_hard" in governor.log()


def test_an_async_job_that_swallows_cancellation_is_stopped_too(governor):
    start(governor, {"t": {"concurrency": 1, "jobs_per_worker": 4, "retry": {"max": 0},
                           "timeout": {"soft": "off", "hard": "1s", "grace": "500ms"}}})
    [worker] = worker_pids(governor, "t")
    job = governor.client.enqueue("t", "inflight:swallow", "sw")
    rec = dead_lettered(governor.client, job, 10)
    assert rec["reason"] == "timeout_hard" and rec["attempts"] == 1
    assert rec["errors"][0]["reason"] == "timeout_hard"
    assert 1.5 - 0.05 <= rec["errors"][0]["seconds"] < 2.5, rec["errors"]
    # the limit was thrown into the task first (and swallowed), then the worker was killed
    assert lines(governor, "swallowed"), "the hard limit never reached the task"
    assert not lines(governor, "done")
    wait_for(lambda: gone(worker), 5, "the killed worker to be gone")
    assert governor.wait_workers("t", 1)[0]["pid"] != worker


# -- 5: memory.hard with several running: suspects, each alone next ----------------------------

def test_a_memory_hog_among_sleepers_ends_dead_and_the_sleepers_end_done(governor):
    """A worker at about 40 MiB, memory.hard 250 MiB; the hog allocates 400 MiB beside 3
    sleepers. All 4 go back uncharged as suspects; each then runs alone: the sleepers finish,
    the hog is killed alone and charged, until retry.max (1) is spent: dead, memory_hard."""
    start(governor, {"m": {"concurrency": 1, "jobs_per_worker": 4,
                           "retry": {"max": 1, "backoff": "10ms", "max_backoff": "20ms"},
                           "memory": {"soft": "off", "hard": "250MiB", "interval": "100ms"}}})
    sleepers = [f"s{i}" for i in range(3)]
    ids = governor.client.enqueue_many("m", [
        {"handler": "inflight:long_first_run", "args": [k, 10, 0.1]} for k in sleepers] + [
        {"handler": "inflight:hog", "args": ["hog", 400, 5]}])
    hog = ids[-1]
    rec = dead_lettered(governor.client, hog, 20)
    assert rec["reason"] == "memory_hard" and rec.get("suspect") == 1, rec
    # three kills: the first beside the sleepers (not charged), then two alone (retry.max 1)
    assert rec["attempts"] == 2, rec
    assert [e["reason"] for e in rec["errors"]] == ["memory_hard"] * 3, rec["errors"]
    assert all(e["memory"] > 250 * 2**20 and e["limit"] == 250 * 2**20 for e in rec["errors"]), rec["errors"]
    # each killed within moments of crossing (memory.interval 100 ms), the first one included
    hogging = [float(t) for k, _, t in lines(governor, "hogging")]
    assert len(hogging) == 3
    for began, err in zip(hogging, rec["errors"], strict=True):
        assert err["at"] / 1000 - began < 1.5, (err["at"] / 1000 - began, rec["errors"])
    recs = all_done(governor, ids[:3], "m", 10, "the sleepers")
    for r in recs:
        assert r["attempts"] == 1 and r["result"] == "slept" and r.get("suspect") == 1, r
        [err] = r["errors"]
        assert err["reason"] == "memory_hard", err
    # each hog run was in a worker of its own (each was killed)
    pids = [int(pid) for k, pid, _ in lines(governor, "hogging") if k == "hog"]
    assert len(pids) == 3 and len(set(pids)) == 3, pids
    # the suspects' second runs were alone: no rerun overlapped another (the hog's solo runs
    # end at their kills)
    second = {k: float(t) for k, _, t in lines(governor, "start")[3:]}
    ended = {k: float(t) for k, _, t in lines(governor, "done")}
    assert set(second) == set(ended) == set(sleepers)
    reruns = [(second[k], ended[k]) for k in sleepers] + [
        (t, e["at"] / 1000) for t, e in zip(hogging[1:], rec["errors"][1:], strict=True)]
    assert max_overlap(reruns) == 1, reruns
    assert governor.client.counts("m")["dead"] == 1


# -- 6: a soft limit is thrown into its job alone ---------------------------------------------

@pytest.mark.parametrize("kind", ["thread", "async"])
def test_a_soft_timeout_reaches_only_its_job(governor, kind):
    """Queue limits soft 10 s / hard 20 s; job A's own timeout 2 s gives it a soft limit of
    1 s. Its neighbours (a thread and a task) run 2 s beside it and see nothing."""
    start(governor, {"s": {"concurrency": 1, "jobs_per_worker": 4,
                           "timeout": {"soft": "10s", "hard": "20s"}}})
    a_handler = "inflight:soft_catcher" if kind == "thread" else "inflight:asoft_catcher"
    ids = governor.client.enqueue_many("s", [
        {"handler": a_handler, "args": ["A", 5], "timeout": "2s"},
        {"handler": "inflight:soft_catcher", "args": ["B", 2]},
        {"handler": "inflight:asoft_catcher", "args": ["C", 2]}])
    recs = all_done(governor, ids, "s", 10, "the three jobs")
    assert [r["result"] for r in recs] == ["soft", "normal", "normal"], recs
    soft = lines(governor, "soft")
    assert [k for k, _ in soft] == ["A"]
    # A got it about 1 s after it was reserved, while B and C were running
    at = float(soft[0][1])
    assert 1.0 - 0.02 <= at - recs[0]["started_at"] < 2.0, at - recs[0]["started_at"]
    started = {k: float(t) for k, _, t in lines(governor, "start")}
    assert all(started[k] < at < recs[i]["finished_at"] for i, k in ((1, "B"), (2, "C")))


# -- 7, 8: fleet rules count jobs, not processes -----------------------------------------------

def _inflight_master(redis_url: str):
    def make(d):
        g = Governor(d, redis_url)
        g.add_app("inflight")
        return g
    return make


def test_global_concurrency_across_two_masters_with_slots(tmp_path, redis_server):
    """global_concurrency 5 over 2 masters x 2 workers x 2 slots: 8 slots in 4 processes.
    Never more than 5 jobs run at once (each counts itself in Redis); and 5 do, which no
    single master (4 slots) can reach alone."""
    fleet = Fleet(tmp_path, redis_server.url)
    try:
        queue = {"g": {"concurrency": 2, "jobs_per_worker": 2, "global_concurrency": 5}}
        a = fleet.master("a", queue, make=_inflight_master(redis_server.url)).start()
        b = fleet.master("b", queue, make=_inflight_master(redis_server.url)).start()
        tag = f"gc{uuid.uuid4().hex[:8]}"
        ids = a.client.enqueue_many("g", [
            {"handler": "inflight:acounted" if i % 2 else "inflight:counted",
             "args": [redis_server.url, tag, 0.25]} for i in range(30)])
        recs = all_done(a, ids, "g", 20, "30 jobs")
        r = redis.Redis.from_url(redis_server.url)
        assert int(r.get(f"{tag}:starts")) == 30
        assert int(r.get(f"{tag}:max")) == 5, "more (or fewer) than 5 jobs ran at once"
        assert int(r.get(f"{tag}:running")) == 0
        assert {rec["result"] for rec in recs} == {a.proc.pid, b.proc.pid}
        assert max_overlap([(rec["started_at"], rec["finished_at"]) for rec in recs]) <= 5
    finally:
        fleet.stop()


def test_per_key_order_with_slots_on_a_partitioned_queue(tmp_path, redis_server):
    """8 keys x 8 jobs on a partitioned queue served by 2 masters x 2 workers x 8 slots: the
    jobs of one key never overlap and run in enqueue order, while different keys' jobs run side
    by side in one worker."""
    fleet = Fleet(tmp_path, redis_server.url)
    try:
        queue = {"o": {"concurrency": 2, "jobs_per_worker": 8, "partitions": 4}}
        a = fleet.master("a", queue).start()
        fleet.master("b", queue).start()
        keys = [f"k{i}" for i in range(8)]
        a.client.enqueue_many("o", [{"handler": "parttasks:ordered", "args": [k, s, 0.05], "key": k}
                                    for s in range(8) for k in keys])
        wait_for(lambda: sum(1 for e in fleet.lines("order") if e[0] == "end") >= 64, 15, "64 jobs",
                 interval=0.05)
        assert sum(int(a.client.counts("o")[s]) for s in ("waiting", "delayed", "active", "dead")) == 0
        events = fleet.lines("order")
        spans: dict[str, list[tuple[int, float, float, int]]] = collections.defaultdict(list)
        opened: dict[tuple[str, int], float] = {}
        for kind, key, seq, pid, t in events:
            if kind == "start":
                opened[(key, int(seq))] = float(t)
            else:
                spans[key].append((int(seq), opened.pop((key, int(seq))), float(t), int(pid)))
        assert not opened, f"started and never ended: {opened}"
        for key in keys:
            runs = sorted(spans[key], key=lambda s: s[1])
            assert [s[0] for s in runs] == list(range(8)), f"key {key} ran out of order: {runs}"
            for prev, nxt in zip(runs, runs[1:], strict=False):
                assert prev[2] <= nxt[1], f"key {key}: job {nxt[0]} started before job {prev[0]} ended"
        # the slots were used: some worker ran jobs of different keys at once
        by_pid = collections.defaultdict(list)
        for key in keys:
            for _seq, t0, t1, pid in spans[key]:
                by_pid[pid].append((t0, t1))
        assert max(max_overlap(s) for s in by_pid.values()) >= 2, "no worker ran two jobs at once"
    finally:
        fleet.stop()


# -- 9, 10: a killed worker, a stopped master --------------------------------------------------

def test_sigkill_of_a_worker_holding_20_jobs_requeues_all_20_at_once(governor):
    """Lease 30 s: the master, not the lease's expiry, puts them back, within a moment of the
    crash; they are not charged (retry.max 0), each runs twice at most, none is lost."""
    start(governor, {"k": {"concurrency": 1, "jobs_per_worker": 20, "retry": {"max": 0}}}, lease="30s")
    [worker] = worker_pids(governor, "k")
    keys = [f"j{i}" for i in range(20)]
    ids = governor.client.enqueue_many("k", [
        {"handler": "inflight:long_first_run", "args": [k, 30, 0.05]} for k in keys])
    wait_for(lambda: len(lines(governor, "start")) == 20, 10, "20 jobs running")
    os.kill(worker, signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: all(r and r["errors"] for r in records(governor, ids, "k")), 3,
             "every job of the killed worker to be requeued", interval=0.02)
    requeued = time.monotonic() - killed
    assert requeued < 3
    recs = all_done(governor, ids, "k", 15, "the 20 jobs, run again")
    for r in recs:
        assert r["attempts"] == 1 and r["result"] == "slept", r
        [err] = r["errors"]
        assert err["reason"] == "crashed" and "not charged" in err["error"], err
    starts = collections.Counter(k for k, *_ in lines(governor, "start"))
    assert starts == {k: 2 for k in keys}
    assert collections.Counter(k for k, *_ in lines(governor, "done")) == {k: 1 for k in keys}
    assert governor.client.counts("k")["dead"] == 0
    # a crash with several running: each went back as a suspect, and ran alone next time
    assert all(r.get("suspect") == 1 for r in recs)
    second = {k: float(t) for k, _, t in lines(governor, "start")[20:]}
    ended = {k: float(t) for k, _, t in lines(governor, "done")}
    assert max_overlap([(second[k], ended[k]) for k in keys]) == 1


def test_sigterm_with_20_in_flight_finishes_each_once_and_starts_none_after(governor):
    start(governor, {"d": {"concurrency": 2, "jobs_per_worker": 10}})
    tag = f"st{uuid.uuid4().hex[:8]}"
    url = governor.redis_url
    ids = governor.client.enqueue_many("d", [
        {"handler": "inflight:started", "args": [url, tag, f"j{i}", 2.0]} for i in range(30)])
    r = redis.Redis.from_url(url)
    wait_for(lambda: r.llen(f"{tag}:starts") >= 20, 10, "20 jobs in flight")
    governor.signal(signal.SIGTERM)
    assert governor.wait_exit(20) == 0, governor.log()
    started = [k.decode() for k in r.lrange(f"{tag}:starts", 0, -1)]
    assert len(started) == 20 and len(set(started)) == 20, started  # none started after
    done = [k for k, *_ in lines(governor, "done")]
    assert sorted(done) == sorted(started)  # each finished, once
    by_key = {f"j{i}": rec for i, rec in enumerate(records(governor, ids, "d"))}
    for k in started:
        assert by_key[k]["state"] == "done" and by_key[k]["attempts"] == 1, by_key[k]
    assert governor.client.counts("d")["waiting"] == 10
    assert governor.client.counts("d")["active"] == 0


# -- 11, 12: status and check ---------------------------------------------------------------

def test_status_shows_each_worker_s_jobs_and_slots(governor):
    start(governor, {"v": {"concurrency": 2, "jobs_per_worker": 5}})
    ids = governor.client.enqueue_many("v", [
        {"handler": "inflight:anap" if i % 2 else "inflight:nap", "args": [f"j{i}", 3]} for i in range(7)])
    wait_for(lambda: len(lines(governor, "start")) == 7, 10, "7 jobs running")

    def running() -> dict | None:
        out = cli("status", "-c", str(governor.config_path), "--json")
        assert out.returncode == 0, out.stderr
        st = json.loads(out.stdout)
        [pool] = [p for p in st["pools"] if p["queue"] == "v"]
        held = [j["id"] for w in pool["workers"] for j in w.get("jobs", [])]
        return pool if sorted(held) == sorted(ids) else None

    # (the master looks every 50 ms while a worker is busy: within a second, not seconds)
    pool = wait_for(running, 1.0, "status to show the 7 jobs")
    assert len(pool["workers"]) == 2
    pids = {int(pid) for _, pid, _ in lines(governor, "start")}
    for w in pool["workers"]:
        assert w["slots"] == 5
        assert 1 <= len(w["jobs"]) <= 5
        assert w["pid"] in pids or not w["jobs"]
        for j in w["jobs"]:
            assert j["handler"] in ("inflight:nap", "inflight:anap") and 0 <= j["seconds"] < 4, j
    by_pid = collections.defaultdict(set)
    for key, pid, _ in lines(governor, "start"):
        by_pid[int(pid)].add(ids[int(key[1:])])
    assert {w["pid"]: set(j["id"] for j in w["jobs"]) for w in pool["workers"]} == by_pid
    # once they have finished, no worker holds a job
    all_done(governor, ids, "v", 10, "the 7 jobs")
    wait_for(lambda: all(not w["jobs"] for w in governor.workers("v")), 5, "status to show no jobs")
    assert all(w["slots"] == 5 for w in governor.workers("v"))


@pytest.mark.parametrize("bad", [0, 1.5])
def test_check_refuses_a_bad_jobs_per_worker_naming_the_path(governor, bad):
    governor.add_app("inflight")
    governor.write({"mail": {"concurrency": 2, "jobs_per_worker": bad}})
    cfg = yaml.safe_load(governor.config_path.read_text())
    assert cfg["queues"]["mail"]["jobs_per_worker"] == bad
    out = cli("check", "-c", str(governor.config_path))
    assert out.returncode != 0, out.stdout
    assert "queues.mail.jobs_per_worker" in out.stdout + out.stderr, out.stdout + out.stderr
