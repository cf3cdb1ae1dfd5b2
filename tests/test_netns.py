"""Issue 16 through a real network partition: a master in a network namespace of its own,
cut off from Redis by setting its veth link down (packets dropped silently), while another
master, in the root namespace, shares the queue. Needs root (skips otherwise)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from fleet import LEASE, Fleet, _no_overlap
from harness import APPS, free_port, wait_for

pytest_plugins = ("netns",)


@pytest.fixture
def cut_fleet(tmp_path, partition, partition_redis):
    from netns import NamespacedGovernor

    f = Fleet(tmp_path, partition_redis.url)
    f.inside = lambda d: NamespacedGovernor(d, partition_redis, partition)
    yield f
    if partition.is_cut:
        partition.heal()
    f.stop()


def test_cut_off_longer_than_the_lease_the_run_stops_before_the_rerun_starts(cut_fleet, partition):
    f = cut_fleet
    a = f.master("a", {"w": {"concurrency": 1}}, make=f.inside).start()
    job = a.client.enqueue("w", "parttasks:heartbeat", "j", 4.0)
    wait_for(lambda: f.lines("beats"), 5, "the job to start inside the namespace")
    b = f.master("b", {"w": {"concurrency": 1}}).start()
    time.sleep(0.3)
    partition.cut()
    cut = time.time()
    wait_for(lambda: len(f.runs()) == 2, LEASE + 4, "b to take the job over", interval=0.05)
    takeover = min(first for first, _ in f.runs().values() if first > cut) - cut
    print(f"takeover after the cut: {takeover:.2f}s")
    assert takeover < LEASE + 2
    wait_for(lambda: f.lines("done"), 10, "the job to finish on b", interval=0.1)
    partition.heal()
    wait_for(lambda: "lost the lease" in a.log(), 15, "a to learn its lease is gone", interval=0.2)
    time.sleep(0.5)
    runs = _no_overlap(f.runs())
    print(f"first run's last beat to second run's first: {runs[1][0] - runs[0][1]:.3f}s")
    assert len(runs) == 2 and len(f.lines("done")) == 1, "the job completed twice"
    record = a.client.job(job)
    assert record["state"] == "done"
    assert any(e.get("reason") == "lease_lost" for e in record["errors"]), record["errors"]
    # the cut-off master lives, and takes jobs again once healed
    a.assert_running()
    b.stop()
    a.client.enqueue("w", "tasks:record", "after")
    wait_for(lambda: a.lines("done") == ["after"], 15, "a to take a job after the heal", interval=0.1)


def test_cut_off_shorter_than_the_lease_nothing_is_stopped(cut_fleet, partition):
    f = cut_fleet
    a = f.master("a", {"w": {"concurrency": 1}}, make=f.inside).start()
    job = a.client.enqueue("w", "parttasks:heartbeat", "j", 2.5)
    wait_for(lambda: f.lines("beats"), 5, "the job to start")
    b = f.master("b", {"w": {"concurrency": 1}}).start()
    partition.cut()
    time.sleep(LEASE * 0.3)
    partition.heal()
    wait_for(lambda: f.lines("done"), 15, "the job to finish", interval=0.1)
    assert len(f.runs()) == 1, "the job ran on a second host"
    beats = sorted(float(t) for _, _, t in f.lines("beats"))
    assert max(y - x for x, y in zip(beats, beats[1:], strict=False)) < 0.3, "frozen: a false alarm"
    assert a.client.job(job)["attempts"] == 1
    assert "lost the lease" not in a.log() and "resumed after" not in a.log()
    assert b.lines("done") == []


def test_a_cut_off_master_enforces_hard_timeouts_answers_healthz_and_drains(cut_fleet, partition):
    f = cut_fleet
    port = free_port()
    a = f.master("a", {"w": {"concurrency": 2, "timeout": {"soft": "off", "hard": "1500ms"}}},
                 make=f.inside, metrics={"listen": f"127.0.0.1:{port}"}, health={"redis_grace": "1s"},
                 shutdown_timeout="2s").start()
    a.client.enqueue("w", "parttasks:fence", "slow", 30)
    wait_for(lambda: f.lines("fences"), 5, "the job to start")
    started = time.monotonic()
    partition.cut()
    wait_for(lambda: "timeout_hard" in a.log(), 5, "the hard timeout, while cut off", interval=0.05)
    assert time.monotonic() - started < 2.2, "the hard limit was enforced late"

    def healthz() -> str:
        out = partition.run([sys.executable, str(APPS / "http_probe.py"), f"http://127.0.0.1:{port}/healthz"],
                            stdout=subprocess.PIPE, text=True)
        return out.communicate(timeout=5)[0]

    answer = wait_for(lambda: (h := healthz()).startswith("503") and h, 8, "/healthz to say why")
    assert "redis unreachable" in answer
    a.signal(signal.SIGTERM)
    assert a.wait_exit(8) == 0
