"""Issue 8: what reaches Redis is checked before any write, and what is read back from it is
untrusted. Protocol-level, against a real redis-server."""

from __future__ import annotations

import json
import time

import pytest
import redis

from governor.protocol.queue import QueueKeys, Reserved, lease_of, run

from harness import reserve


def _nothing_written(client, queue):
    k = client.keys(queue)
    assert client.counts(queue)["waiting"] == client.counts(queue)["delayed"] == 0
    assert client.redis.hlen(k.meta) == client.redis.hlen(k.data) == 0


@pytest.mark.parametrize("job_id", ["a\tb", "a\nb", "a b", "a\x1bb", "x" * 201, "caf\u00e9"])
def test_the_client_refuses_job_ids_outside_printable_ascii(client, job_id):
    with pytest.raises(ValueError, match="job_id must be 1-200 printable ASCII"):
        client.enqueue("q", "m:f", job_id=job_id)
    _nothing_written(client, "q")


@pytest.mark.parametrize("job_id", ["a\tb", "a\nb", "x" * 201])
def test_the_enqueue_script_refuses_them_too_for_producers_that_bypass_the_client(client, job_id):
    keys = client.keys("q")
    good = ("ok-1", '{"handler":"m:f"}', '{"id":"ok-1","priority":50}', 0)
    bad = (job_id, '{"handler":"m:f"}', json.dumps({"id": job_id, "priority": 50}), 0)
    with pytest.raises(redis.ResponseError, match=r"job 2 of 2 .*printable ASCII"):
        run(client.redis, keys.enqueue([good, bad]))
    _nothing_written(client, "q")  # the good job before it was not written either


def test_a_lease_on_an_id_with_a_tab_is_renewed_and_released(client):
    """The defect: renew.lua could not parse such an entry, so the live master never renewed
    the lease and the job was taken from under its worker by another host."""
    keys = client.keys("q")
    job_id = "legacy\tid with spaces\n"  # in Redis from before ids were checked
    client.redis.hset(keys.data, job_id, '{"handler":"m:f","args":[],"kwargs":{}}')
    client.redis.hset(keys.meta, job_id, json.dumps({"id": job_id, "priority": 50}))
    client.redis.zadd(keys.waiting, {job_id: 1})
    job = reserve(client, "q", worker="host:1", token="tok", lease_ms=300)
    assert job.id == job_id
    assert lease_of(client.redis, keys, "host:1") == (job_id, "tok")
    assert run(client.redis, keys.renew(60_000, ["host:1"]))[0] == [1]
    time.sleep(0.4)
    tick = run(client.redis, keys.tick(3_600_000))[0]
    assert tick[12:] == [], "the renewed lease was seen as expired"
    assert run(client.redis, keys.ack(job_id, "tok", "host:1", 60_000, "", 1))[0] == 1
    assert client.redis.hget(keys.leases, "host:1") is None  # released
    assert client.job(job_id, "q")["state"] == "done"


def test_release_only_forgets_the_lease_of_exactly_this_job(client):
    keys = client.keys("q")
    client.redis.hset(keys.leases, "host:1", "a b tok2")  # held: job "a b", token tok2
    client.redis.hset(keys.meta, "a", json.dumps({"id": "a", "state": "active", "token": "tok1"}))
    client.redis.zadd(keys.active, {"a": 1})
    run(client.redis, keys.ack("a", "tok1", "host:1", 60_000, "", 1))
    assert client.redis.hget(keys.leases, "host:1") == b"a b tok2"  # a prefix is not the id


@pytest.mark.parametrize("field, value", [
    ("timeout", float("inf")), ("timeout", float("nan")), ("timeout", -1), ("timeout", 1e12),
    ("delay", float("inf")), ("delay", -5), ("delay", 1e12), ("max_retries", -1),
    ("max_retries", 10**9), ("priority", 101), ("priority", 1.5),
])
def test_numbers_are_checked_before_any_write(client, field, value):
    with pytest.raises(ValueError, match=field):
        client.enqueue("q", "m:f", **{field: value})
    _nothing_written(client, "q")


@pytest.mark.parametrize("meta, words", [
    ({"id": "j", "priority": 50, "timeout": 1e999}, "finite"),
    ({"id": "j", "priority": 50, "timeout": -3}, "timeout"),
    ({"id": "j", "priority": 500}, "priority"),
    ({"id": "j", "priority": 50, "max_retries": 0.5}, "max_retries"),
])
def test_the_enqueue_script_checks_numbers_written_around_the_client(client, meta, words):
    keys = client.keys("q")
    raw = json.dumps(meta).replace("Infinity", "1e999")
    with pytest.raises(redis.ResponseError, match=words):
        run(client.redis, keys.enqueue([("j", '{"handler":"m:f"}', raw, 0)]))
    with pytest.raises(redis.ResponseError, match="delay_ms"):
        run(client.redis, keys.enqueue([("j", '{"handler":"m:f"}', '{"id":"j"}', -1)]))
    _nothing_written(client, "q")


def test_a_bulk_enqueue_is_all_or_nothing(client):
    jobs = [{"handler": "m:f", "args": [i]} for i in range(2500)]
    jobs[2100]["timeout"] = float("inf")
    with pytest.raises(ValueError, match="job 2100: timeout"):
        client.enqueue_many("q", jobs)
    _nothing_written(client, "q")
    jobs[2100]["timeout"] = 5
    ids = client.enqueue_many("q", jobs)
    assert client.counts("q")["waiting"] == 2500 == len(set(ids))


def test_a_bulk_enqueue_that_redis_refuses_writes_nothing(client):
    """Redis refusing the transaction (here: maxmemory) must not leave the first chunks in."""
    jobs = [{"handler": "m:f", "args": ["x" * 100]} for _ in range(3000)]
    client.redis.config_set("maxmemory", "1")
    try:
        with pytest.raises(redis.RedisError):
            client.enqueue_many("q", jobs)
    finally:
        client.redis.config_set("maxmemory", "0")
    _nothing_written(client, "q")


def test_a_record_with_an_infinite_number_is_dead_lettered_not_stranded(client):
    """cjson decodes 1e999 to inf and refuses to encode it: reserve used to fail after
    moving the job to `active`, where it stayed forever."""
    keys = client.keys("q")
    job_id = client.enqueue("q", "m:f")
    client.redis.hset(keys.meta, job_id, '{"id":"' + job_id + '","priority":50,"timeout":1e999}')
    job = reserve(client, "q", lease_ms=200)
    assert job.id == job_id and "not finite" in job.meta["malformed"]
    # nobody settles it (its worker died): the lease runs out and the tick dead-letters it
    # once its record is unusable, instead of leaving it in `active`
    client.redis.hset(keys.meta, job_id, '{"broken')
    time.sleep(0.3)
    run(client.redis, keys.tick(3_600_000))
    record = client.job(job_id, "q")
    assert record["state"] == "dead" and record["reason"] == "malformed"
    assert client.counts("q")["active"] == 0


def test_reading_records_nested_100000_deep_fails_cleanly(client):
    keys = client.keys("q")
    deep = "[" * 100_000 + "]" * 100_000
    client.redis.hset(keys.meta, "deep", deep)
    client.redis.hset(keys.data, "deep", deep)
    record = client.job("deep", "q")
    assert record["state"] == "unknown" and "nested too deeply" in record["malformed"]
    reply = [1, b"deep", deep.encode(), deep.encode()]
    assert "nested too deeply" in Reserved.from_reply(reply, "t").meta["malformed"]


def test_keys_are_under_one_hash_tag_still():
    keys = QueueKeys("governor", "email")
    assert {k.split("}")[0] for k in (keys.stats, keys.active, keys.dead)} == {"{governor:email"}
