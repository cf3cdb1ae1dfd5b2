"""Issue 21, items 14 and 18: before any master has started a partitioned queue, a pause holds
and producers can enqueue keyed jobs (the CLI from the config's count, the Client when told
it); a count that conflicts with the registered one is refused."""

from __future__ import annotations

import subprocess
import sys

import pytest

from governor.protocol.queue import Client, partition_of

from harness import wait_for


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "governor", *args], capture_output=True, text=True,
                          timeout=30)


def test_a_pause_before_the_first_start_holds(governor):
    assert governor.client.pause("pq")
    governor.start({"pq": {"concurrency": 2, "partitions": 2}})
    wait_for(lambda: governor.client.partitions("pq") == 2 and len(governor.client.partition_holders("pq")) == 2,
             10, "the master to start the queue and hold its partitions")
    assert governor.client.paused("pq")
    assert all(governor.client.redis.exists(lane.paused) for lane in governor.client.lanes("pq"))
    governor.client.enqueue_many("pq", [{"handler": "tasks:record", "args": [f"k{i}"], "key": f"k{i}"}
                                        for i in range(4)])
    hints = [governor.client.keys("pq").hint_list(m) for m in set(governor.client.partition_holders("pq").values())]
    # the idle workers took the hints and were told the queue is paused
    wait_for(lambda: not any(governor.client.redis.llen(h) for h in hints), 10, "the hints consumed")
    assert governor.client.counts("pq")["waiting"] == 4 and governor.lines("done") == []
    assert governor.client.resume("pq")
    wait_for(lambda: len(governor.lines("done")) == 4, 10, "every job to run after resume")


def test_the_cli_enqueues_keyed_jobs_before_any_master(governor):
    governor.write({"pq": {"concurrency": 1, "partitions": 4}})
    out = cli("enqueue", "-c", str(governor.config_path), "pq", "tasks:record", "--args", '["a"]', "--key", "k1")
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    lane = governor.client.keys("pq").part(partition_of("k1", 4))
    assert governor.client.redis.zscore(lane.waiting, job_id) is not None
    assert governor.client.partitions("pq") == 4
    governor.start()
    wait_for(lambda: governor.lines("done") == ["a"], 10, "the job to run once a master starts")


def test_the_client_told_the_count_enqueues_and_refuses_a_conflict(client):
    told = Client(client.redis, prefix=client.prefix, partitions={"pq": 4})
    job_id = told.enqueue("pq", "m:f", key="k1")
    assert client.partitions("pq") == 4
    assert client.job(job_id)["state"] == "waiting"
    assert client.redis.zscore(client.keys("pq").part(partition_of("k1", 4)).waiting, job_id) is not None
    with pytest.raises(ValueError, match="partitioned: every job needs a key"):
        told.enqueue("pq", "m:f")  # a partitioned queue's job needs a key
    wrong = Client(client.redis, prefix=client.prefix, partitions={"pq": 3})
    with pytest.raises(ValueError, match=r"4 partitions.*3"):
        wrong.enqueue("pq", "m:f", key="k2")
    with pytest.raises(ValueError, match="partition count"):
        Client(client.redis, prefix=client.prefix, partitions={"pq": 0})


def test_a_lost_partition_count_is_written_again_by_the_master(governor):
    """A failover can lose a write the old primary had not yet replicated, the partition count
    included: producers that read it from Redis would refuse keyed jobs until a master restarted.
    The master writes it again (SET NX) at least once a lease."""
    governor.start({"o": {"concurrency": 1, "partitions": 4}}, lease="2s")
    key = governor.client.keys("o").partitions_key
    wait_for(lambda: governor.client.redis.get(key) == b"4", 10, "the master to register the count")
    governor.client.redis.delete(key)  # what the promoted replica never had
    wait_for(lambda: governor.client.redis.get(key) == b"4", 10, "the count to be written again")
    fresh = Client(governor.client.redis, prefix=governor.prefix)
    job = fresh.enqueue("o", "tasks:record", "keyed", key="k")
    wait_for(lambda: governor.lines("done") == ["keyed"], 10, "the keyed job to run")
    assert fresh.job(job)["state"] == "done"
