"""governor on a real local Redis Cluster (3 primaries, 3 replicas): the core job flow, a
partitioned queue spread over the shards, and a primary killed mid-run (its replica takes
over; the master keeps going without a restart)."""

from __future__ import annotations

import os
import signal
import time

from governor import Client
from governor.protocol.queue import partition_of

from harness import Governor, wait_for

pytest_plugins = ("cluster",)

QUEUES = {"q": 2, "ordered": {"concurrency": 2, "partitions": 8},
          "limited": {"concurrency": 1, "rate_limit": {"limit": 20, "per": "1s"}}}


def done(g: Governor) -> set[str]:
    return set(g.lines("done"))


def test_job_flow_on_a_cluster(tmp_path, redis_cluster):
    g = Governor(tmp_path, redis_cluster.url)
    g.start(QUEUES)
    try:
        c = g.client
        one = c.enqueue("q", "tasks:record", "single")
        c.enqueue_many("q", [{"handler": "tasks:record", "args": [f"bulk{i}"]} for i in range(1500)])
        c.enqueue("q", "tasks:record", "delayed", delay=0.5)
        bad = c.enqueue("q", "tasks:fail", "poison")
        c.enqueue_many("ordered", [{"handler": "tasks:record", "args": [f"{k}-{s}"], "key": k}
                                   for s in range(5) for k in ("alice", "bob", "carol")])
        c.enqueue_many("limited", [{"handler": "tasks:record", "args": [f"lim{i}"]} for i in range(10)])
        expected = {"single", "delayed", *(f"bulk{i}" for i in range(1500)),
                    *(f"{k}-{s}" for s in range(5) for k in ("alice", "bob", "carol")),
                    *(f"lim{i}" for i in range(10))}
        wait_for(lambda: expected <= done(g), 60, "every job on the cluster")
        assert c.job(one)["state"] == "done"
        wait_for(lambda: c.job(bad)["state"] == "dead", 10, "the poison job dead-lettered")
        assert len(c.job(bad)["errors"]) == 3  # the first run and its 2 retries
        for k in ("alice", "bob", "carol"):
            mine = [x for x in g.lines("done") if x.startswith(f"{k}-")]
            assert mine == [f"{k}-{s}" for s in range(5)], mine
        # the partitioned queue really is spread over the shards
        owners = {redis_cluster.primary_for(f"{{{g.prefix}:ordered:{p}}}") for p in range(8)}
        assert len(owners) > 1
        assert {partition_of(k, 8) for k in ("alice", "bob", "carol")}

        # a worker SIGKILLed mid-job: its job comes back and completes
        c.enqueue("q", "tasks:sleep_then_record", "killed", 1.0)
        wait_for(lambda: "killed" in g.lines("start"), 10, "the job to start")
        victim = next(w["pid"] for w in g.workers("q") if w["job"])
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: "killed" in done(g), 15, "the killed worker's job to run again")
        assert g.lines("start").count("killed") == 2
        g.assert_running()
    finally:
        g.stop()


def test_primary_failover_mid_run(tmp_path, private_cluster):
    g = Governor(tmp_path, private_cluster.url)
    g.start({"q": 2, "ordered": {"concurrency": 2, "partitions": 8}})
    pid = g.proc.pid
    try:
        # a producer that knows the partition count from its config, as item 18 lets it (a
        # failover may lose a write the old primary had not replicated yet; the master also
        # writes the count again every REASSERT_EVERY)
        c = Client(g.client.redis, prefix=g.prefix, partitions={"ordered": 8})
        c.enqueue_many("q", [{"handler": "tasks:sleep_then_record", "args": [f"before{i}", 0.05]}
                             for i in range(40)])
        wait_for(lambda: len(done(g)) >= 5, 20, "jobs to flow")
        victim = private_cluster.primary_for(f"{{{g.prefix}:q}}")
        private_cluster.kill_primary(victim)
        killed = time.monotonic()
        private_cluster.wait_promoted(victim, timeout=20)
        promoted = time.monotonic()
        after = [c.enqueue("q", "tasks:record", f"after{i}") for i in range(20)]
        c.enqueue_many("ordered", [{"handler": "tasks:record", "args": [f"k{i % 4}-{i}"], "key": f"k{i % 4}"}
                                   for i in range(20)])
        first_after = wait_for(lambda: any(x.startswith("after") for x in done(g)) and time.monotonic(),
                               30, "a job enqueued after the failover to run")
        wanted = {f"after{i}" for i in range(20)} | {f"k{i % 4}-{i}" for i in range(20)}
        wait_for(lambda: wanted <= done(g), 30, "every job enqueued after the failover")
        wait_for(lambda: {f"before{i}" for i in range(40)} <= done(g), 30, "the jobs from before it")
        assert g.proc.pid == pid and g.proc.poll() is None, "the master restarted"
        assert all(c.job(j)["state"] == "done" for j in after)
        print(f"failover: promoted {promoted - killed:.2f}s after the kill; first new job done "
              f"{first_after - promoted:.2f}s after the promotion")
        assert first_after - promoted < 10
    finally:
        g.stop()
