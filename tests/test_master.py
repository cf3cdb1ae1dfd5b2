"""The master end to end: real `governor run`, real forks, real signals, real Redis."""

from __future__ import annotations

import collections
import signal
import time

from harness import wait_for


def test_ten_thousand_jobs_run_exactly_once_and_failures_reach_dead_letter(governor):
    governor.start({"alpha": {"concurrency": 2}, "beta": {"concurrency": 2}})
    c = governor.client
    for q in ("alpha", "beta"):
        c.enqueue_many(q, [{"handler": "tasks:record", "args": [f"{q}-{i}"]} for i in range(5000)])
    bad = c.enqueue("beta", "tasks:fail", "x")

    def finished():
        a, b = c.counts("alpha"), c.counts("beta")
        return a["done_total"] == 5000 and b["done_total"] == 5000 and b["dead"] == 1

    wait_for(finished, 90, "10,000 jobs to finish", interval=0.2)
    runs = collections.Counter(governor.lines("done"))
    assert len(runs) == 10000
    assert set(runs.values()) == {1}, [k for k, v in runs.items() if v > 1][:5]
    for q in ("alpha", "beta"):
        counts = c.counts(q)
        assert counts["waiting"] == counts["active"] == counts["delayed"] == 0
    record = c.job(bad)
    assert record["state"] == "dead" and record["reason"] == "exception"
    assert record["attempts"] == 3  # retry.max 2: the first run and two retries
    assert len(record["errors"]) == 3
    assert all("ValueError: boom x" in e["traceback"] and 'in fail' in e["traceback"] for e in record["errors"])
    # default recycle.max_jobs (1000, jittered) replaced workers along the way: still exactly once
    pids = collections.Counter(line.split()[1] for line in (governor.records / "done").read_text().splitlines())
    assert len(pids) >= 10000 // 1000
    assert max(pids.values()) <= 1000


def test_sigterm_lets_in_flight_jobs_finish_and_exits_zero(governor):
    governor.start({"slow": {"concurrency": 4}})
    ids = [governor.client.enqueue("slow", "tasks:sleep_then_record", f"j{i}", 3) for i in range(4)]
    wait_for(lambda: len(governor.lines("start")) == 4, 10, "four jobs to start")
    t0 = time.monotonic()
    governor.signal(signal.SIGTERM)
    assert governor.wait_exit(20) == 0
    elapsed = time.monotonic() - t0
    assert sorted(governor.lines("done")) == sorted(f"j{i}" for i in range(4))
    assert elapsed < 8, f"drain took {elapsed:.1f}s"
    counts = governor.client.counts("slow")
    assert counts["active"] == 0 and counts["waiting"] == 0 and counts["delayed"] == 0
    assert counts["done"] == 4 and counts["retried_total"] == 0
    assert all(governor.client.job(i)["attempts"] == 1 for i in ids)
    assert "reason drain" in governor.log()


def test_drain_past_shutdown_timeout_kills_and_requeues(governor):
    governor.start({"slow": {"concurrency": 1}}, shutdown_timeout="1s")
    job = governor.client.enqueue("slow", "tasks:sleep_then_record", "long", 30)
    wait_for(lambda: governor.lines("start"), 10, "the job to start")
    governor.signal(signal.SIGTERM)
    assert governor.wait_exit(10) == 0
    record = governor.client.job(job)
    assert record["state"] == "waiting"  # back in the queue, for the next master
    assert record["attempts"] == 0  # not the job's fault: the attempt is not counted
    assert record["errors"][-1]["reason"] == "shutdown"


def test_sigint_stops_fast_and_requeues(governor):
    governor.start({"slow": {"concurrency": 2}})
    job = governor.client.enqueue("slow", "tasks:sleep_then_record", "long", 30)
    wait_for(lambda: governor.lines("start"), 10, "the job to start")
    t0 = time.monotonic()
    governor.signal(signal.SIGINT)
    assert governor.wait_exit(10) == 0
    assert time.monotonic() - t0 < 3
    assert governor.client.job(job)["state"] == "waiting"


def test_sigkill_of_a_busy_worker_requeues_its_job_and_replaces_it(governor):
    governor.start({"work": {"concurrency": 2}})
    job = governor.client.enqueue("work", "tasks:sleep_then_record", "k", 1.5)
    wait_for(lambda: governor.lines("start"), 10, "the job to start")
    busy = wait_for(lambda: governor.workers("work", ("busy",)), 5, "a busy worker")[0]
    before = {w["pid"] for w in governor.workers("work")}
    import os
    os.kill(busy["pid"], signal.SIGKILL)
    wait_for(lambda: governor.lines("done") == ["k"], 15, "the job to run again and complete")
    assert governor.lines("start") == ["k", "k"]
    record = governor.client.job(job)
    assert record["state"] == "done" and record["attempts"] == 2
    assert record["errors"][0]["reason"] == "crashed"
    assert "SIGKILL" in record["errors"][0]["error"]
    workers = governor.wait_workers("work", 2)
    assert busy["pid"] not in {w["pid"] for w in workers}
    assert len({w["pid"] for w in workers} - before) == 1
    assert len(governor.children()) == 2


def test_sighup_scales_up_and_down_without_interrupting_a_job(governor):
    governor.start({"work": {"concurrency": 2}})
    governor.write({"work": {"concurrency": 5}})
    governor.signal(signal.SIGHUP)
    t0 = time.monotonic()
    governor.wait_workers("work", 5, timeout=2)
    wait_for(lambda: len(governor.children()) == 5, 2, "five worker processes")
    assert time.monotonic() - t0 < 2

    # every worker busy: scaling down must drain busy workers, not kill them
    jobs = [governor.client.enqueue("work", "tasks:sleep_then_record", f"inflight{i}", 2.5) for i in range(5)]
    wait_for(lambda: len(governor.lines("start")) == 5, 5, "five jobs to start")
    governor.write({"work": {"concurrency": 1}})
    governor.signal(signal.SIGHUP)
    governor.wait_workers("work", 1, timeout=2)  # four are draining: they take no more work
    wait_for(lambda: len(governor.lines("done")) == 5, 10, "every in-flight job to complete")
    assert all(governor.client.job(j)["attempts"] == 1 for j in jobs)  # none was killed and retried
    assert sorted(governor.lines("start")) == sorted(f"inflight{i}" for i in range(5))
    wait_for(lambda: len(governor.children()) == 1, 5, "one worker process left")
    assert governor.workers("work")[0]["state"] == "idle"


def test_an_idle_worker_blocks_in_redis_instead_of_polling(governor):
    import redis as redis_lib

    governor.start({"work": {"concurrency": 2}})
    conn = redis_lib.Redis.from_url(governor.redis_url)
    mine = lambda: [c for c in conn.client_list()  # noqa: E731
                    if c["name"].startswith("governor-worker-work-")]
    wait_for(lambda: len(mine()) == 2 and all(c["cmd"] == "blpop" for c in mine()), 5, "both workers in BLPOP")
    before = {c["id"]: int(c["tot-cmds"]) if "tot-cmds" in c else None for c in mine()}
    time.sleep(2)
    for c in mine():
        assert c["cmd"] == "blpop" and int(c["idle"]) >= 1  # still the same blocked call
        if before.get(c["id"]) is not None:
            assert int(c["tot-cmds"]) == before[c["id"]]


def test_sighup_with_settings_change_replaces_workers(governor):
    governor.start({"work": {"concurrency": 2}})
    before = {w["pid"] for w in governor.workers("work")}
    governor.write({"work": {"concurrency": 2, "timeout": {"soft": "5s", "hard": "9s"}}})
    governor.signal(signal.SIGHUP)
    wait_for(lambda: len(governor.workers("work")) == 2 and not before & {w["pid"] for w in governor.workers("work")},
             5, "both workers replaced")
    assert "settings changed" in governor.log()


def test_sighup_with_a_broken_file_keeps_the_old_config(governor):
    governor.start({"work": {"concurrency": 3}})
    governor.config_path.write_text(governor.config_path.read_text().replace("concurrency: 3", "concurrency: lots"))
    governor.signal(signal.SIGHUP)
    wait_for(lambda: "reload failed" in governor.log(), 5, "the reload error in the log")
    log = governor.log()
    assert "keeping the running config" in log and "queues.work.concurrency" in log and "'lots'" in log
    governor.config_path.write_text("queues: [unclosed\n")
    governor.signal(signal.SIGHUP)
    wait_for(lambda: "invalid YAML" in governor.log(), 5, "the YAML error in the log")
    time.sleep(0.3)
    governor.assert_running()
    assert len(governor.workers("work")) == 3
    governor.client.enqueue("work", "tasks:record", "after")
    wait_for(lambda: governor.lines("done") == ["after"], 5, "a job to run on the old config")


def test_handler_outside_the_allowlist_is_dead_lettered_unimported(governor):
    marker = governor.dir / "imported"
    (governor.dir / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef run():\n    pass\n")
    governor.start({"work": {"concurrency": 1}})
    job = governor.client.enqueue("work", "evil:run")
    wait_for(lambda: governor.client.job(job)["state"] == "dead", 5, "the job to be dead-lettered")
    record = governor.client.job(job)
    assert record["reason"] == "not_allowed"
    assert "not allowed by app.handlers" in record["errors"][0]["error"]
    assert not marker.exists()
    governor.client.enqueue("work", "tasks:record", "still-works")
    wait_for(lambda: governor.lines("done") == ["still-works"], 5, "the worker to keep working")


def test_delayed_job_runs_within_a_second_of_due(governor):
    governor.start({"work": {"concurrency": 1}})
    t0 = time.time()
    job = governor.client.enqueue("work", "tasks:record", "later", delay=1.5)
    wait_for(lambda: governor.lines("done") == ["later"], 5, "the delayed job")
    record = governor.client.job(job)
    assert 1.5 <= record["started_at"] - t0 < 2.5


def test_workers_die_with_the_master_and_carry_a_telling_title(governor):
    governor.start({"work": {"concurrency": 2}})
    governor.client.enqueue("work", "tasks:sleep_then_record", "titled", 5)
    busy = wait_for(lambda: governor.workers("work", ("busy",)), 5, "a busy worker")[0]

    def title() -> str:
        return open(f"/proc/{busy['pid']}/cmdline", "rb").read().replace(b"\0", b" ").decode()

    # the worker reports its run (what the master reads) a moment before it retitles itself
    wait_for(lambda: busy["job"]["id"] in title(), 5, "the worker's title to name its job")
    assert "governor: worker work[" in title() and "tasks:sleep_then_record" in title()
    pids = [c.pid for c in governor.children()]
    governor.proc.kill()  # SIGKILL: no chance to clean up
    governor.wait_exit()
    import psutil
    gone, alive = psutil.wait_procs([psutil.Process(p) for p in pids if psutil.pid_exists(p)], timeout=3)
    assert alive == [], f"orphaned workers: {alive}"


def test_a_dead_hosts_job_comes_back_when_its_lease_expires(governor):
    from governor.protocol.queue import run

    c = governor.client
    job = c.enqueue("work", "tasks:record", "orphan")
    # a worker on another host takes the job, then that host vanishes: nobody renews the lease
    run(c.redis, c.keys("work").reserve("otherhost:4242", "tok", 1500))
    assert c.job(job)["state"] == "active"
    governor.start({"work": {"concurrency": 1}})
    time.sleep(0.5)
    assert governor.lines("done") == []  # not before the lease runs out
    wait_for(lambda: governor.lines("done") == ["orphan"], 5, "the orphaned job to be reclaimed and run")
    record = c.job(job)
    assert record["attempts"] == 2 and record["errors"][0]["reason"] == "lease_expired"
    assert "otherhost:4242" in record["errors"][0]["error"]


def test_the_master_outranks_its_workers_for_the_cpu_and_jobs_keep_the_operators_priority(governor):
    """With more busy workers than cores a master at their priority waits behind them all, and
    every hard limit is late by that wait: it raises its own (tests run as root, which may);
    the workers go back to the priority governor was started with, the operator's."""
    import os

    import psutil

    from governor.supervise.master import MASTER_BOOST

    base = os.getpriority(os.PRIO_PROCESS, 0)
    governor.start({"work": {"concurrency": 2}})
    governor.client.enqueue("work", "tasks:sleep_then_record", "niced", 5)
    busy = wait_for(lambda: governor.workers("work", ("busy",)), 5, "a busy worker")[0]
    assert psutil.Process(governor.proc.pid).nice() == max(-20, base - MASTER_BOOST)
    assert {psutil.Process(w["pid"]).nice() for w in governor.workers("work")} == {base}
    assert psutil.Process(busy["pid"]).nice() == base
