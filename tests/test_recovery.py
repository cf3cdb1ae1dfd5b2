"""Never lose a job: a master that dies, a Redis that goes away, and coming back from both."""

from __future__ import annotations

import signal
import time

import psutil
import pytest

from harness import wait_for


def test_master_sigkill_then_restart_recovers_jobs_at_once_not_after_the_lease(governor):
    governor.start({"w": {"concurrency": 2}})  # lease: 60s, the default
    ids = [governor.client.enqueue("w", "tasks:sleep_then_record", k, 3) for k in ("a", "b")]
    wait_for(lambda: len(governor.lines("start")) == 2, 5, "both jobs to start")
    workers = [c.pid for c in governor.children()]
    governor.proc.kill()
    governor.wait_exit()
    gone, alive = psutil.wait_procs([psutil.Process(p) for p in workers if psutil.pid_exists(p)], timeout=3)
    assert not alive, "workers outlived their master"
    assert {governor.client.job(i)["state"] for i in ids} == {"active"}  # leased to dead workers

    restarted = time.time()
    governor.start()
    wait_for(lambda: sorted(governor.lines("done")) == ["a", "b"], 10, "both jobs to run again")
    for i in ids:
        record = governor.client.job(i)
        assert record["started_at"] - restarted < 2.0, "recovered by lease expiry, not at once"
        assert record["errors"][0]["reason"] == "orphaned"
    assert "recovering 2 job(s)" in governor.log()


def test_redis_stopped_for_ten_seconds_during_work_loses_nothing(private_redis, private_governor):
    g = private_governor
    g.start({"w": {"concurrency": 2}})
    g.client.enqueue_many("w", [{"handler": "tasks:sleep_then_record", "args": [f"j{i}", 0.2]}
                                for i in range(40)])
    long = g.client.enqueue("w", "tasks:sleep_then_record", "long", 4)
    wait_for(lambda: len(g.lines("done")) >= 5, 10, "work to be under way")
    private_redis.stop()
    master = psutil.Process(g.proc.pid)
    cpu0 = sum(master.cpu_times()[:2])
    time.sleep(10)
    g.assert_running()
    assert sum(master.cpu_times()[:2]) - cpu0 < 1.0, "the master spun while Redis was away"
    assert len(g.workers("w")) == 2  # nobody died over it
    private_redis.start()
    wait_for(lambda: len(set(g.lines("done"))) == 41, 30, "every job to finish after the outage",
             interval=0.2)
    counts = g.client.counts("w")
    assert counts["done"] == 41 and counts["active"] == counts["waiting"] == 0
    assert g.client.job(long)["state"] == "done"
    log = g.log()
    assert "Redis unavailable" in log and "Redis is reachable again" in log
    # logged once per state change, not once per retry
    assert log.count("Redis unavailable") <= 1 + 2  # the master, and each worker at most once


def test_redis_restart_with_aof_loses_no_queued_job(private_redis, private_governor):
    g = private_governor
    ids = g.client.enqueue_many("w", [{"handler": "tasks:record", "args": [f"q{i}"]} for i in range(500)])
    private_redis.stop()
    private_redis.start()
    assert g.client.counts("w")["waiting"] == 500
    g.start({"w": {"concurrency": 2}})
    wait_for(lambda: len(g.lines("done")) == 500, 30, "all 500 jobs")
    assert sorted(g.lines("done")) == sorted(f"q{i}" for i in range(500))
    assert all(g.client.job(i)["state"] == "done" for i in ids[:10])


def test_sigterm_during_a_redis_outage_still_exits(private_redis, private_governor):
    g = private_governor
    g.start({"w": {"concurrency": 1}}, shutdown_timeout="2s")
    private_redis.stop()
    time.sleep(0.5)
    g.signal(signal.SIGTERM)
    assert g.wait_exit(15) == 0


def test_a_master_stalled_past_the_lease_keeps_its_own_workers_jobs(governor):
    governor.start({"w": {"concurrency": 1}}, lease="2s")
    job = governor.client.enqueue("w", "tasks:sleep_then_record", "stall", 5)
    wait_for(lambda: governor.lines("start"), 5, "the job to start")
    governor.signal(signal.SIGSTOP)  # a stuck master: nobody renews the lease for 3 s
    time.sleep(3)
    governor.signal(signal.SIGCONT)
    wait_for(lambda: governor.lines("done") == ["stall"], 10, "the job to finish")
    assert governor.lines("start") == ["stall"], "the job ran twice"
    record = governor.client.job(job)
    assert record["attempts"] == 1 and record["errors"] == []
    assert "lease_expired" not in governor.log()


def test_redis_refusing_writes_does_not_kill_the_master(private_redis, private_governor):
    g = private_governor
    g.start({"w": {"concurrency": 1}}, lease="3s")
    job = g.client.enqueue("w", "tasks:sleep_then_record", "norep", 1.5)
    wait_for(lambda: g.lines("start"), 5, "the job to start")
    import redis
    admin = redis.Redis.from_url(private_redis.url)
    admin.config_set("min-replicas-to-write", 1)  # every write now fails with NOREPLICAS
    time.sleep(2.5)  # the job finishes; its ack and the master's renewals are refused
    g.assert_running()
    admin.config_set("min-replicas-to-write", 0)
    wait_for(lambda: g.client.job(job)["state"] == "done", 10, "the ack to go through")
    assert g.lines("done") == ["norep"] and g.lines("start") == ["norep"]
    assert "NOREPLICAS" in g.log()


def test_reloads_in_quick_succession_leave_the_pool_at_its_size(governor):
    governor.start({"w": {"concurrency": 1}})
    for n in (8, 1, 6, 2):
        governor.write({"w": {"concurrency": n}})
        governor.signal(signal.SIGHUP)
        time.sleep(0.005)
    governor.wait_workers("w", 2, timeout=5)
    wait_for(lambda: len(governor.children()) == 2, 5, "two worker processes")
    governor.assert_running()
    assert "draining" not in governor.log() and "stopping" not in governor.log()  # no shutdown began


@pytest.mark.parametrize("concurrency", [1, {"min": 0, "max": 2}], ids=["fixed", "elastic-at-0"])
def test_a_master_with_a_partitioned_queue_does_not_spin_while_redis_is_away(private_redis, private_governor,
                                                                              concurrency):
    """The partition leases' next wake-up was still asked for while their pass could not run
    (Redis away, or a drain): the loop woke at once, again and again (2.8 s of CPU in 3 s for a
    pool at 0 that watches the partitions nobody holds)."""
    g = private_governor
    g.start({"p": {"concurrency": concurrency, "partitions": 4}})
    private_redis.stop()
    master = psutil.Process(g.proc.pid)
    wait_for(lambda: "Redis unavailable" in g.log(), 10, "the master to see Redis gone", interval=0.1)
    cpu0 = sum(master.cpu_times()[:2])
    time.sleep(3)  # a window to measure the master's CPU over, not a wait for a condition
    used = sum(master.cpu_times()[:2]) - cpu0
    assert used < 0.5, "the master spun while Redis was away"
    g.assert_running()
    private_redis.start()
