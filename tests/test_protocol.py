"""The Redis protocol against a real redis-server: ordering, leases, fencing, retries."""

from __future__ import annotations

import json
import threading
import time

import pytest

from governor.protocol.queue import FailOutcome, QueueKeys, run

from harness import reserve


def test_lower_priority_number_first_then_fifo(client):
    ids = [client.enqueue("q", "m:f", i, priority=p) for i, p in enumerate([50, 10, 50, 10, 90, 0])]
    order = [reserve(client, "q", token=f"t{i}").id for i in range(6)]
    assert order == [ids[5], ids[1], ids[3], ids[0], ids[2], ids[4]]
    assert reserve(client, "q") is None


def test_enqueue_many_is_one_call_and_keeps_order(client):
    ids = client.enqueue_many("q", [{"handler": "m:f", "args": [i]} for i in range(2500)])
    assert len(set(ids)) == 2500
    assert client.counts("q")["waiting"] == 2500
    got = [json.loads(reserve(client, "q", token=str(i)).payload)["args"][0] for i in range(5)]
    assert got == [0, 1, 2, 3, 4]


def test_job_id_is_idempotent(client):
    assert client.enqueue("q", "m:f", job_id="order-17") == "order-17"
    client.enqueue("q", "m:f", job_id="order-17")
    assert client.counts("q")["waiting"] == 1


def test_delayed_job_is_not_reserved_before_due(client):
    job_id = client.enqueue("q", "m:f", delay=0.3)
    assert client.job(job_id)["state"] == "delayed"
    assert reserve(client, "q") is None
    time.sleep(0.35)
    job = reserve(client, "q")
    assert job is not None and job.id == job_id


def test_fencing_a_worker_that_lost_its_lease_cannot_settle(client):
    job_id = client.enqueue("q", "m:f")
    keys = client.keys("q")
    first = reserve(client, "q", worker="w1", token="old", lease_ms=1)
    time.sleep(0.01)
    # the master's tick finds the lease expired and requeues the job
    tick = run(client.redis, keys.tick(3_600_000))[0]
    expired = dict(zip(tick[12::2], tick[13::2], strict=True))
    meta = json.loads(expired[job_id.encode()])
    assert run(client.redis, keys.fail(job_id, meta["token"], meta["worker"], {"error": "lease"},
                                       "retry", 0, "lease_expired", 3))[0] == FailOutcome.RETRYING
    second = reserve(client, "q", worker="w2", token="new")
    assert second.id == first.id == job_id
    # the old holder wakes up and tries to settle: refused, the new lease is untouched
    assert run(client.redis, keys.ack(job_id, "old", "w1", 3_600_000, "", 1))[0] == 0
    assert run(client.redis, keys.fail(job_id, "old", "w1", None, "dead", 0, "x", 3))[0] == FailOutcome.LOST
    assert client.job(job_id)["state"] == "active"
    assert run(client.redis, keys.ack(job_id, "new", "w2", 3_600_000, '"r"', 1))[0] == 1
    record = client.job(job_id)
    assert record["state"] == "done" and record["result"] == "r" and record["attempts"] == 2


def test_retries_then_dead_letter_with_every_error(client):
    job_id = client.enqueue("q", "m:f", max_retries=2)
    keys = client.keys("q")
    for attempt in range(1, 4):
        job = reserve(client, "q", token=f"t{attempt}")
        assert job.attempts == attempt
        outcome = run(client.redis, keys.fail(job_id, f"t{attempt}", "w1", {"error": f"E{attempt}"},
                                              "retry", 0, "exception", 9))[0]
        assert outcome == (FailOutcome.RETRYING if attempt < 3 else FailOutcome.DEAD)
    record = client.job(job_id)
    assert record["state"] == "dead" and record["reason"] == "exception"
    assert [e["error"] for e in record["errors"]] == ["E1", "E2", "E3"]
    assert client.counts("q")["dead"] == 1


def test_retry_backoff_goes_through_delayed(client):
    job_id = client.enqueue("q", "m:f")
    reserve(client, "q", token="t")
    run(client.redis, client.keys("q").fail(job_id, "t", "w1", None, "retry", 200, "exception", 3))
    assert client.job(job_id)["state"] == "delayed"
    assert reserve(client, "q", token="u") is None
    time.sleep(0.25)
    assert reserve(client, "q", token="u").id == job_id


def test_requeue_does_not_count_the_attempt_and_keeps_place(client):
    first = client.enqueue("q", "m:f")
    second = client.enqueue("q", "m:f")
    reserve(client, "q", token="t")
    run(client.redis, client.keys("q").fail(first, "t", "w1", None, "requeue", 0, "shutdown", 3))
    job = reserve(client, "q", token="u")
    assert job.id == first and job.attempts == 1
    assert client.counts("q")["waiting"] == 1
    assert reserve(client, "q", token="v").id == second


def test_done_records_expire_after_ttl(client):
    keys = client.keys("q")
    ids = [client.enqueue("q", "m:f") for _ in range(3)]
    for i, job_id in enumerate(ids):
        reserve(client, "q", token=str(i))
        run(client.redis, keys.ack(job_id, str(i), "w1", 50, "", 1))
    time.sleep(0.1)
    run(client.redis, keys.tick(50))
    assert client.counts("q")["done"] == 0
    assert client.job(ids[0]) is None


def test_lease_lookup_and_renewal(client):
    from governor.protocol.queue import lease_of

    keys = client.keys("q")
    job_id = client.enqueue("q", "m:f")
    reserve(client, "q", worker="host:1", token="tok", lease_ms=500)
    assert lease_of(client.redis, keys, "host:1") == (job_id, "tok")
    run(client.redis, keys.renew(60_000, ["host:1", "host:2"]))
    time.sleep(0.6)
    tick = run(client.redis, keys.tick(3_600_000))[0]
    assert tick[12:] == []  # renewed, so not expired


def test_idle_worker_blocks_until_enqueue(client, redis_server):
    """A worker with nothing to do sits in BLPOP on the wake list: no polling."""
    keys = client.keys("q")
    assert reserve(client, "q") is None
    woke = []

    def waiter():
        from governor.protocol.connection import connect
        conn = connect(redis_server.url, socket_timeout=None)
        woke.append(conn.blpop([keys.wake], timeout=5))

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.2)
    assert woke == []
    client.enqueue("q", "m:f")
    t.join(2)
    assert woke and woke[0] is not None


def test_enqueue_rejects_bad_input(client):
    with pytest.raises(ValueError, match="JSON-serialisable"):
        client.enqueue("q", "m:f", object())
    with pytest.raises(ValueError, match="priority must be an integer 0-100"):
        client.enqueue("q", "m:f", priority=101)
    with pytest.raises(ValueError, match="over the limit"):
        client.enqueue("q", "m:f", "x" * (1024 * 1024 + 1))
    with pytest.raises(ValueError, match="module:function"):
        client.enqueue("q", "nocolon")
    assert client.counts("q")["waiting"] == 0


def test_keys_of_a_queue_share_one_hash_tag():
    keys = QueueKeys("governor", "email")
    tags = {k.split("}")[0] + "}" for k in (keys.waiting, keys.delayed, keys.active, keys.meta,
                                             keys.data, keys.leases, keys.wake, keys.dead, keys.done)}
    assert tags == {"{governor:email}"}


def test_results_keep_their_json_exactly(client):
    keys = client.keys("q")
    job_id = client.enqueue("q", "m:f")
    reserve(client, "q", token="t")
    result = json.dumps({"items": [], "big": 12345678901234567, "nested": {"empty": {}}})
    run(client.redis, keys.ack(job_id, "t", "w1", 3_600_000, result, 1))
    assert client.job(job_id)["result"] == {"items": [], "big": 12345678901234567, "nested": {"empty": {}}}


def test_an_error_cjson_cannot_parse_still_settles_the_job(client):
    keys = client.keys("q")
    job_id = client.enqueue("q", "m:f", max_retries=0)
    reserve(client, "q", token="t")
    raw = '{"error": "bad \\udcff surrogate"}'  # a lone surrogate escape: cjson refuses it
    outcome = run(client.redis, keys.fail(job_id, "t", "w1", None, "dead", 0, "exception", 0)
                  ._replace(args=(job_id, "t", "w1", raw, "dead", 0, "exception", 0)))[0]
    assert outcome == FailOutcome.DEAD
    record = client.job(job_id)
    assert record["state"] == "dead" and client.counts("q")["active"] == 0
    assert "surrogate" in record["errors"][0]["error"]


def test_a_resent_reserve_returns_the_same_job_and_a_resent_ack_succeeds(client):
    keys = client.keys("q")
    first, second = client.enqueue("q", "m:f"), client.enqueue("q", "m:f")
    a = reserve(client, "q", worker="w1", token="t1")
    again = reserve(client, "q", worker="w1", token="t1")  # its reply was lost; the worker retries
    assert a.id == again.id == first
    assert client.counts("q")["waiting"] == 1  # the second job was not stranded
    assert run(client.redis, keys.ack(first, "t1", "w1", 3_600_000, "", 1))[0] == 1
    assert run(client.redis, keys.ack(first, "t1", "w1", 3_600_000, "", 1))[0] == 1  # retried ack
    assert reserve(client, "q", worker="w1", token="t2").id == second
