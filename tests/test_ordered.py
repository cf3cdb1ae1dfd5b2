"""Partitioned, per-key ordered queues: order, parallelism across keys, partition leases;
always two or three real masters on one real Redis, killed with real signals."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict

import pytest
import redis
import yaml

from governor.protocol.queue import partition_of

from fleet import LEASE, Fleet
from harness import wait_for


def check_order(fleet: Fleet, keys: dict[str, int]) -> None:
    """Every job of every key ran, and per key: completions in enqueue order, and no job
    started before the one enqueued before it had finished (a retried job may repeat)."""
    events = sorted(fleet.lines("order"), key=lambda e: float(e[4]))
    first_end: dict[tuple[str, int], float] = {}
    ended: dict[str, list[int]] = defaultdict(list)
    for kind, key, seq, _pid, t in events:
        if kind == "end":
            first_end.setdefault((key, int(seq)), float(t))
            ended[key].append(int(seq))
    for key, n in keys.items():
        assert ended[key] == sorted(ended[key]), f"key {key}: completions out of order: {ended[key]}"
        assert set(ended[key]) == set(range(n)), f"key {key}: never ran: {set(range(n)) - set(ended[key])}"
    for kind, key, seq, _pid, t in events:
        s = int(seq)
        if kind == "start" and s > 0:
            prev = first_end.get((key, s - 1))
            assert prev is not None and prev <= float(t), \
                f"key {key}: job {s} started at {t} before job {s - 1} finished ({prev})"


def ends(fleet: Fleet) -> int:
    return len({(e[1], e[2]) for e in fleet.lines("order") if e[0] == "end"})


def holders(fleet: Fleet, queue: str) -> dict[int, str]:
    r = redis.Redis.from_url(fleet.redis_url)
    raw = r.hgetall(f"{{{fleet.prefix}:{queue}}}:holders")
    return {int(p): m.decode() for p, m in raw.items()}


def held_by_pid(fleet: Fleet, queue: str) -> dict[int, list[int]]:
    """master pid -> partitions it holds, as Redis records the leases."""
    out: dict[int, list[int]] = defaultdict(list)
    for p, master in holders(fleet, queue).items():
        out[int(master.split(":")[-2])].append(p)
    return out


def test_per_key_order_through_worker_and_master_kills(tmp_path, redis_server):
    """20 keys x 50 jobs on 16 partitions, two masters with 4 workers each; a worker SIGKILLed
    every 300 ms and one master SIGKILLed and restarted mid-run: every job runs, and per key
    the completions are in enqueue order."""
    fleet = Fleet(tmp_path, redis_server.url)
    queues = {"ordered": {"concurrency": 4, "partitions": 16}}
    a, b = fleet.master("a", queues), fleet.master("b", queues)
    killer_stop = threading.Event()
    try:
        a.start()
        b.start()
        keys = {f"customer-{i}": 50 for i in range(20)}
        a.client.enqueue_many("ordered", [
            {"handler": "parttasks:ordered", "args": [k, s, 0.01], "key": k}
            for s in range(50) for k in keys])

        def kill_workers() -> None:
            rng = random.Random(7)
            while not killer_stop.wait(0.3):
                # workers past their start-up (on a loaded machine a fork spends long importing,
                # and kills of workers that never ran a job would cut no run short)
                pids = [w["pid"] for g in (a, b) if g.proc and g.proc.poll() is None
                        for w in g.workers("ordered", ("idle", "busy")) if w["jobs_done"] > 0]
                if pids:
                    try:
                        os.kill(rng.choice(pids), signal.SIGKILL)
                    except OSError:
                        pass

        killer = threading.Thread(target=kill_workers, daemon=True)
        killer.start()
        wait_for(lambda: ends(fleet) >= 250, 60, "a quarter of the jobs")
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(10)
        a.start(wait=False)
        wait_for(lambda: ends(fleet) >= 1000, 120, "every job to finish")
        killer_stop.set()
        killer.join()
        check_order(fleet, keys)
        counts = a.client.counts("ordered")
        print(counts)
        assert counts["retried_total"] > 0, "no run was cut short: the test proved nothing"
        assert counts["done_total"] == 1000 - counts["dead"], counts
        assert counts["waiting"] == counts["active"] == 0, counts
    finally:
        killer_stop.set()
        fleet.stop()


def test_keys_of_one_partition_run_in_parallel(tmp_path, redis_server):
    """No head-of-line blocking: 8 keys that hash to the same partition run 8 at once."""
    fleet = Fleet(tmp_path, redis_server.url)
    g = fleet.master("a", {"ordered": {"concurrency": 8, "partitions": 16}})
    try:
        g.start()
        same = [k for k in (f"user{i}" for i in range(2000)) if partition_of(k, 16) == 3][:8]
        assert len(same) == 8
        g.client.enqueue_many("ordered", [{"handler": "parttasks:ordered", "args": [k, 0, 1.0], "key": k}
                                          for k in same])
        wait_for(lambda: ends(fleet) >= 8, 20, "the 8 jobs")
        spans = defaultdict(dict)
        for kind, key, _seq, _pid, t in fleet.lines("order"):
            spans[key][kind] = float(t)
        latest_start = max(s["start"] for s in spans.values())
        earliest_end = min(s["end"] for s in spans.values())
        assert latest_start < earliest_end, "the 8 jobs did not all run at the same time"
    finally:
        fleet.stop()


def test_partition_leases_balance_take_over_and_hand_back(tmp_path, redis_server):
    """16 partitions over three masters: 5 or 6 each. A SIGKILLed master's partitions are held
    again within lease + 2 s; a SIGTERMed one hands its partitions over within 2 s."""
    fleet = Fleet(tmp_path, redis_server.url)
    queues = {"ordered": {"concurrency": 1, "partitions": 16}}
    masters = [fleet.master(n, queues) for n in ("a", "b", "c")]
    try:
        for g in masters:
            g.start()
        pids = [g.proc.pid for g in masters]

        def balanced() -> bool:
            held = held_by_pid(fleet, "ordered")
            return sorted(len(held.get(p, [])) for p in pids) == [5, 5, 6]
        wait_for(balanced, 10, "5 or 6 partitions per master")
        status = masters[0].status()["partitions"]["ordered"]
        assert len(status["held"]) in (5, 6) and status["partitions"] == 16

        # SIGKILL: its leases lapse after `lease`, then the others take them
        dead = masters[2]
        lost = held_by_pid(fleet, "ordered")[dead.proc.pid]
        dead.proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        dead.proc.wait(10)
        survivors = set(pids[:2])
        wait_for(lambda: all(int(m.split(":")[-2]) in survivors for m in holders(fleet, "ordered").values())
                 and len(holders(fleet, "ordered")) == 16, LEASE + 2.0, "the dead master's partitions taken")
        took = time.monotonic() - killed_at
        assert took <= LEASE + 2.0, f"takeover of {lost} took {took:.2f}s"
        wait_for(lambda: sorted(len(v) for v in held_by_pid(fleet, "ordered").values()) == [8, 8], 5,
                 "8 partitions each")

        # SIGTERM: handed over at once
        masters[1].signal(signal.SIGTERM)
        termed_at = time.monotonic()
        wait_for(lambda: set(held_by_pid(fleet, "ordered")) == {pids[0]}
                 and len(holders(fleet, "ordered")) == 16, 2.0, "the drained master's partitions taken")
        print(f"takeover after SIGKILL {took:.2f}s (lease {LEASE}s); after SIGTERM "
              f"{time.monotonic() - termed_at:.2f}s")
        assert masters[1].wait_exit() == 0
    finally:
        fleet.stop()


@pytest.mark.parametrize("change", [{"partitions": 8}, {}])
def test_changing_partitions_on_reload_is_refused(tmp_path, redis_server, change):
    fleet = Fleet(tmp_path, redis_server.url)
    g = fleet.master("a", {"ordered": {"concurrency": 1, "partitions": 4}})
    try:
        g.start()
        g.write({"ordered": {"concurrency": 2, **change}})  # (app.handlers: tasks:* and parttasks:*)
        g.signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in g.log(), 10, "the reload to be refused")
        assert "queue ordered: partitions 4 -> " in g.log()
        time.sleep(0.5)
        assert len(g.workers("ordered")) == 1  # the old config still runs
        g.client.enqueue("ordered", "parttasks:ordered", "k", 0, key="k")
        wait_for(lambda: ends(fleet) == 1, 10, "a job on the old config")
    finally:
        fleet.stop()


def test_enqueue_errors_name_the_queue(tmp_path, redis_server):
    fleet = Fleet(tmp_path, redis_server.url)
    g = fleet.master("a", {"ordered": {"concurrency": 1, "partitions": 4}, "plain": 1})
    try:
        g.start()
        with pytest.raises(ValueError, match="queue 'ordered' is partitioned: every job needs a key"):
            g.client.enqueue("ordered", "parttasks:ordered", "k", 0)
        with pytest.raises(ValueError, match="queue 'plain' is not partitioned"):
            g.client.enqueue("plain", "parttasks:ordered", "k", 0, key="k")
        with pytest.raises(ValueError, match="key must be"):
            g.client.enqueue("ordered", "parttasks:ordered", "k", 0, key="a b")
        assert g.client.counts("ordered")["enqueued_total"] == 0
    finally:
        fleet.stop()


def test_status_shows_holders_and_unheld_partitions(tmp_path, redis_server):
    """partitions_per_host caps what one master takes: the rest show as UNHELD (an alert)."""
    fleet = Fleet(tmp_path, redis_server.url)
    g = fleet.master("a", {"ordered": {"concurrency": 1, "partitions": 4, "partitions_per_host": 3}})
    try:
        g.start()
        wait_for(lambda: len(holders(fleet, "ordered")) == 3, 5, "3 partitions held")
        out = subprocess.run([sys.executable, "-m", "governor", "status", "-c", str(g.config_path)],
                             capture_output=True, text=True, timeout=30, cwd=g.dir)
        assert out.returncode == 0, out.stderr
        line = next(ln for ln in out.stdout.splitlines() if ln.startswith("partitions ordered"))
        assert f":{g.proc.pid} holds 0-2" in line and "UNHELD: 3" in line, line
        data = json.loads(subprocess.run(
            [sys.executable, "-m", "governor", "status", "--json", "-c", str(g.config_path)],
            capture_output=True, text=True, timeout=30, cwd=g.dir).stdout)
        assert data["queues"]["ordered"]["partitions"]["unheld"] == [3]
        assert g.status()["partitions"]["ordered"]["held"] == [0, 1, 2]
    finally:
        fleet.stop()


def test_unique_key_is_held_by_a_job_queued_behind_its_key(redis_server):
    """A job waiting behind its ordering key's head still holds its unique key."""
    from governor import Client
    client = Client.from_url(redis_server.url, prefix="uq")
    client.redis.set(client.keys("ordered").partitions_key, 4)  # as the queue's first master does
    first = client.enqueue("ordered", "m:f", key="acct-1")
    second = client.enqueue("ordered", "m:f", key="acct-1", unique="rebuild-acct-1")
    assert client.job(second)["state"] == "queued"
    again = client.enqueue("ordered", "m:f", key="acct-1", unique="rebuild-acct-1")
    assert again == second, "a second job was queued under a unique key already held"
    assert client.counts("ordered")["waiting"] == 2
    assert first != second


def keys_in(partition: int, n: int, partitions: int, prefix: str = "k") -> list[str]:
    return [k for k in (f"{prefix}{i}" for i in range(100_000)) if partition_of(k, partitions) == partition][:n]


def test_a_busy_partition_does_not_starve_the_others(tmp_path, redis_server):
    """One worker, a backlog in partition 0: a job of partition 1 still gets its turn long
    before the backlog is done (a worker takes turns between the partitions it serves)."""
    fleet = Fleet(tmp_path, redis_server.url)
    g = fleet.master("a", {"ordered": {"concurrency": 1, "partitions": 4}})
    try:
        g.start()
        hot = keys_in(0, 20, 4, "hot")
        g.client.enqueue_many("ordered", [{"handler": "parttasks:ordered", "args": [k, s, 0.01], "key": k}
                                          for s in range(10) for k in hot])
        wait_for(lambda: fleet.lines("order"), 10, "the backlog to start")
        cold = keys_in(1, 1, 4, "cold")[0]
        g.client.enqueue("ordered", "parttasks:ordered", cold, 0, key=cold)
        wait_for(lambda: ends(fleet) >= 201, 30, "every job")
        starts = [e for e in sorted(fleet.lines("order"), key=lambda e: float(e[4])) if e[0] == "start"]
        position = next(i for i, e in enumerate(starts) if e[1] == cold)
        assert position < 60, f"the cold partition's job waited for {position} jobs of the hot one"
    finally:
        fleet.stop()


def test_a_host_that_cannot_start_workers_holds_no_partitions(tmp_path, redis_server):
    """A broken deploy on one host (its workers die at import) must not strand its share of
    the partitions: the healthy host serves them all."""
    fleet = Fleet(tmp_path, redis_server.url)
    queues = {"ordered": {"concurrency": 2, "partitions": 8}}
    broken = fleet.master("broken", queues)
    cfg = yaml.safe_load(broken.config_path.read_text())
    cfg["app"]["imports"] = ["no_such_module_anywhere"]
    broken.config_path.write_text(yaml.safe_dump(cfg))
    good = fleet.master("good", queues)
    try:
        broken.start(wait=False)
        good.start()
        keys = {f"k{i}": 3 for i in range(16)}
        good.client.enqueue_many("ordered", [{"handler": "parttasks:ordered", "args": [k, s], "key": k}
                                             for s in range(3) for k in keys])
        wait_for(lambda: ends(fleet) >= 48, 20, "every job, on the healthy host")
        check_order(fleet, keys)
        assert set(held_by_pid(fleet, "ordered")) == {good.proc.pid}
        wait_for(lambda: "respawning" in broken.log(), 10, "the broken host to back off")
        assert set(held_by_pid(fleet, "ordered")) == {good.proc.pid}
    finally:
        fleet.stop()


def test_a_drained_master_holding_nothing_leaves_at_once(tmp_path, redis_server):
    """A master that holds no partition (more masters than partitions) still leaves the live
    masters when drained: the others' shares grow at their next pass, not after the lease."""
    fleet = Fleet(tmp_path, redis_server.url)
    queues = {"ordered": {"concurrency": 1, "partitions": 2}}
    masters = [fleet.master(n, queues).start() for n in ("a", "b", "c")]
    try:
        r = redis.Redis.from_url(fleet.redis_url)
        key = f"{{{fleet.prefix}:ordered}}:masters"
        wait_for(lambda: r.zcard(key) == 3 and len(holders(fleet, "ordered")) == 2, 10, "three live masters")
        idle = next(g for g in masters if g.proc.pid not in held_by_pid(fleet, "ordered"))
        idle.signal(signal.SIGTERM)
        wait_for(lambda: r.zcard(key) == 2, 2.0, "the drained master to leave")
        assert idle.wait_exit() == 0
    finally:
        fleet.stop()
