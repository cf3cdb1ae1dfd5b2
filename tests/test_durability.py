"""redis.wait: enqueue and settle wait for replicas (WAIT), and say so when too few confirmed.
A real primary, and for the happy path a real replica following it."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import redis

from governor import Client
from governor.protocol.queue import NotReplicated

from harness import RedisServer, wait_for

WAIT = {"replicas": 1, "timeout": "50ms"}


def test_enqueue_without_a_replica_says_so_and_keeps_the_job(private_redis, private_governor):
    client = Client.from_url(private_redis.url, prefix="w", wait=(1, 0.05))
    with pytest.raises(NotReplicated, match=r"only 0 of 1 replica\(s\) confirmed it within 50ms") as err:
        client.enqueue("q", "tasks:record", "a", job_id="job-1")
    assert err.value.ids == ["job-1"]
    assert client.job("job-1")["state"] == "waiting"  # queued on the primary all the same

    g = private_governor
    g.write({"q": 1}, redis={"url": private_redis.url, "prefix": g.prefix, "wait": WAIT})
    out = subprocess.run([sys.executable, "-m", "governor", "enqueue", "-c", str(g.config_path), "q",
                          "tasks:record", "--args", '["b"]', "--job-id", "job-2"],
                         capture_output=True, text=True, timeout=30, cwd=g.dir)
    assert out.returncode == 1
    assert out.stdout.strip() == "job-2"  # the id, so the operator can find (or re-send) it
    assert "only 0 of 1 replica(s)" in out.stderr
    assert g.client.job("job-2")["state"] == "waiting"


def test_settle_waits_for_the_replica(tmp_path, private_redis, private_governor):
    """With a replica following the primary, enqueue and every settle are confirmed; the job's
    final state is on the replica by the time the worker moves on."""
    replica = RedisServer(tmp_path / "replica", "--replicaof", "127.0.0.1", str(private_redis.port))
    replica.start()
    try:
        follower = redis.Redis(port=replica.port)
        wait_for(lambda: follower.info("replication")["master_link_status"] == "up", 10, "the replica to sync")
        g = private_governor
        g.start({"q": 1}, redis={"url": private_redis.url, "prefix": g.prefix,
                                 "wait": {"replicas": 1, "timeout": "2s"}})
        try:
            client = Client.from_url(private_redis.url, prefix=g.prefix, wait=(1, 2.0))
            job = client.enqueue("q", "tasks:record", "x")  # no NotReplicated: the replica has it
            wait_for(lambda: client.job(job)["state"] == "done", 10, "the job to finish")
            on_replica = Client(follower, prefix=g.prefix)
            wait_for(lambda: (on_replica.job(job) or {}).get("state") == "done", 2, "done on the replica")
            time.sleep(0.2)
            assert "not_replicated" not in g.log() and "replica(s) confirmed" not in g.log()
        finally:
            g.stop()
    finally:
        replica.stop()


def test_settle_without_a_replica_is_logged(private_redis, private_governor):
    g = private_governor
    g.start({"q": 1}, redis={"url": private_redis.url, "prefix": g.prefix, "wait": WAIT})
    try:
        job = g.client.enqueue("q", "tasks:record", "y")
        wait_for(lambda: g.client.job(job)["state"] == "done", 10, "the job to finish")
        wait_for(lambda: "settled on the primary, but only 0 of 1 replica(s)" in g.log(), 5,
                 "the warning")
        assert job in g.log()
    finally:
        g.stop()
