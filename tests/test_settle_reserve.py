"""Settling a job and reserving the next in one script call (``settle_and_reserve``), against a
real redis-server: it must do exactly what the ack-or-fail call and the reserve call do one
after the other, keep the settle's fencing, and be safe to re-send after a lost reply."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis

from governor import Client
from governor.protocol.limits import Limit, Rules
from governor.protocol.queue import (
    NO_RULES,
    Call,
    FailOutcome,
    QueueKeys,
    partition_of,
    run,
    settle_and_reserve,
)

from harness import RedisServer

pytest_plugins = ("cluster",)

TTL = 3_600_000
LEASE = 60_000
# fields of a job's record that hold a Redis-clock time, and the sets scored by one
TIME_FIELDS = {"enqueued_at", "started_at", "finished_at", "ready_at", "due_at"}
TIMED_SETS = ("active", "done", "delayed", "dead", "tickets")


class Near:
    """A Redis-clock time (ms): the same step taken a moment apart lands within a second."""

    __hash__ = None  # type: ignore[assignment]

    def __init__(self, ms: Any) -> None:
        self.ms = float(ms)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Near) and abs(self.ms - other.ms) < 1000

    def __repr__(self) -> str:
        return f"~{self.ms:.0f}"


def record(raw: bytes) -> dict[str, Any]:
    meta = json.loads(raw)
    for name in TIME_FIELDS & meta.keys():
        meta[name] = Near(meta[name])
    for entry in meta.get("errors", []):
        entry["at"] = Near(entry["at"])
    return meta


def snapshot(c: Client) -> dict[str, Any]:
    """Every key under the client's prefix, its prefix taken out, times made comparable."""
    r = c.redis
    out: dict[str, Any] = {}
    for raw_key in r.scan_iter(match=f"{{{c.prefix}:*", count=1000):
        key = raw_key.decode()
        name = key.replace(c.prefix, "P", 1)
        timed = key.rsplit(":", 1)[-1] in TIMED_SETS
        kind = r.type(key).decode()
        if kind == "string":
            out[name] = r.get(key)
        elif kind == "list":
            out[name] = r.lrange(key, 0, -1)
        elif kind == "zset":
            out[name] = [(m, Near(s) if timed else s) for m, s in r.zrange(key, 0, -1, withscores=True)]
        elif kind == "hash":
            h = r.hgetall(key)
            if key.endswith(":meta"):
                out[name] = {k: record(v) for k, v in h.items()}
            else:
                out[name] = {k: Near(v) if timed else v for k, v in h.items()}
        else:
            raise AssertionError(f"unexpected {kind} at {key}")
    return out


def reply_of_reserve(reply: list[Any]) -> list[Any]:
    if reply[0] == 1:
        return [1, reply[1], reply[2], record(reply[3])]
    if reply[0] in (0, 2):
        return [reply[0], Near(reply[1])]
    return list(reply)


@pytest.fixture
def pair(client: Client) -> tuple[Client, Client]:
    """Two clients of one Redis under prefixes of their own: the same steps taken in each,
    two calls in one and one combined call in the other, must leave the same state."""
    return Client(client.redis, prefix=client.prefix + "a"), Client(client.redis, prefix=client.prefix + "b")


def start(c: Client, jobs: int = 2, **enqueue: Any) -> QueueKeys:
    """``jobs`` jobs queued (ids job-0, job-1...), the first leased to w1 under token t1."""
    for i in range(jobs):
        c.enqueue("q", "m:f", i, job_id=f"job-{i}", **enqueue)
    keys = c.keys("q")
    reply = run(c.redis, keys.reserve("w1", "t1", LEASE))[0]
    assert reply[:2] == [1, b"job-0"]
    return keys


# settle of job-0 (leased to w1 under t1) -> (its reply, the job the reserve takes next)
SETTLES: dict[str, tuple[Callable[[QueueKeys], Call], int, bytes]] = {
    "ack": (lambda k: k.ack("job-0", "t1", "w1", TTL, '{"ok": [1]}', 7), 1, b"job-1"),
    "retry_now": (lambda k: k.fail("job-0", "t1", "w1", {"error": "E"}, "retry", 0, "exception", 3),
                  FailOutcome.RETRYING, b"job-0"),
    "retry_later": (lambda k: k.fail("job-0", "t1", "w1", {"error": "E"}, "retry", 60_000, "exception", 3),
                    FailOutcome.RETRYING, b"job-1"),
    "retries_spent": (lambda k: k.fail("job-0", "t1", "w1", {"error": "E"}, "retry", 0, "exception", 0),
                      FailOutcome.DEAD, b"job-1"),
    "dead": (lambda k: k.fail("job-0", "t1", "w1", {"error": "E"}, "dead", 0, "bad_payload", 3),
             FailOutcome.DEAD, b"job-1"),
    "requeue": (lambda k: k.fail("job-0", "t1", "w1", None, "requeue", 0, "shutdown", 3),
                FailOutcome.REQUEUED, b"job-0"),
    "throttle": (lambda k: k.fail("job-0", "t1", "w1", None, "throttle", 30_000, "throttled", 3),
                 FailOutcome.REQUEUED, b"job-1"),
}


@pytest.mark.parametrize("settle", SETTLES)
def test_one_call_does_what_the_settle_and_the_reserve_do_in_turn(pair, settle):
    build, code, next_job = SETTLES[settle]
    replies = []
    for i, c in enumerate(pair):
        keys = start(c)
        calls = (build(keys), keys.reserve("w1", "t2", LEASE))
        if i == 0:
            replies.append(run(c.redis, *calls))
        else:
            replies.append(run(c.redis, settle_and_reserve(*calls))[0])
    two, one = ([settled, reply_of_reserve(reserved)] for settled, reserved in replies)
    assert one == two
    assert one[0] == code and one[1][1] == next_job
    assert snapshot(pair[1]) == snapshot(pair[0])


@pytest.mark.parametrize("settle", ["ack", "retry_now", "requeue", "dead"])
def test_a_call_re_sent_after_a_lost_reply_answers_the_same_and_changes_nothing(client, settle):
    build, code, next_job = SETTLES[settle]
    keys = start(client)
    call = settle_and_reserve(build(keys), keys.reserve("w1", "t2", LEASE))
    first = run(client.redis, call)[0]
    before = snapshot(client)
    assert run(client.redis, call)[0] == first  # the very same bytes, the same job leased
    assert snapshot(client) == before
    assert first[0] == code and first[1][1] == next_job
    counts = client.counts("q")
    assert counts["active"] == 1 and counts["waiting"] + counts["delayed"] + counts["dead"] + counts["done"] == 1
    errors = client.job("job-0")["errors"]
    assert len(errors) == (0 if settle in ("ack", "requeue") else 1)  # no error written twice


def test_a_stale_settle_is_fenced_and_the_reserve_still_runs(client):
    keys = start(client, jobs=3)
    # w1's lease ran out: the master failed the run with w1's token, and w2 took the job
    assert run(client.redis, keys.fail("job-0", "t1", "w1", {"error": "lease"}, "retry", 0,
                                       "lease_expired", 3))[0] == FailOutcome.RETRYING
    assert run(client.redis, keys.reserve("w2", "new", LEASE))[0][1] == b"job-0"
    # w1 comes back and settles its run: refused, but it gets the next job
    stale_ack = keys.ack("job-0", "t1", "w1", TTL, "", 1)
    assert run(client.redis, settle_and_reserve(stale_ack, keys.reserve("w1", "t2", LEASE)))[0][:1] == [0]
    stale_fail = keys.fail("job-0", "t1", "w1", {"error": "E"}, "retry", 0, "exception", 3)
    settled, reserved = run(client.redis, settle_and_reserve(stale_fail, keys.reserve("w1", "t3", LEASE)))[0]
    assert settled == FailOutcome.LOST and reserved[:2] == [1, b"job-2"]
    record = client.job("job-0")
    assert record["state"] == "active" and record["worker"] == "w2" and len(record["errors"]) == 1
    assert run(client.redis, keys.ack("job-0", "new", "w2", TTL, "", 1))[0] == 1


def ack_and_reserve(c: Client, keys: QueueKeys, rules: Rules = NO_RULES, token: str = "t2") -> list[Any]:
    call = settle_and_reserve(keys.ack("job-0", "t1", "w1", TTL, "", 1),
                              keys.reserve("w1", token, LEASE, rules))
    return run(c.redis, call)[0]


def test_nothing_waiting_says_when_the_next_delayed_job_is_due(client):
    keys = start(client, jobs=1)
    assert ack_and_reserve(client, keys) == [1, [0, -1]]
    client.enqueue("q", "m:f", job_id="later", delay=60)
    settled, (code, due_ms) = run(client.redis, settle_and_reserve(
        keys.ack("job-0", "t1", "w1", TTL, "", 1), keys.reserve("w1", "t3", LEASE)))[0]
    assert settled == 1 and code == 0 and 55_000 < due_ms <= 60_000
    assert client.job("job-0")["state"] == "done" and client.job("later")["state"] == "delayed"


def test_a_paused_queue_settles_and_starts_nothing(client):
    keys = start(client)
    client.pause("q")
    assert ack_and_reserve(client, keys) == [1, [4]]
    assert client.job("job-0")["state"] == "done" and client.job("job-1")["state"] == "waiting"


def test_global_concurrency_reached_starts_nothing(client):
    keys = start(client, jobs=3)
    assert run(client.redis, keys.reserve("w2", "u1", LEASE))[0][1] == b"job-1"
    # two run (one more than the limit, say after a config change); w1 frees one: still at it
    assert ack_and_reserve(client, keys, Rules(global_concurrency=1)) == [1, [3]]
    assert client.counts("q")["waiting"] == 1
    assert ack_and_reserve(client, keys, Rules(global_concurrency=2), token="t3")[1][:2] == [1, b"job-2"]


@pytest.mark.parametrize("tag", ["queue", "limiter"])
def test_a_rate_limited_reserve_gets_a_ticket_and_a_re_send_keeps_it(client, tag):
    owner = client.keys("q").key("") if tag == "queue" else f"{{{client.prefix}:limiter:api}}:"
    rules = Rules(limits=(Limit(f"{owner}rate:0:token_bucket:1/60000", "token_bucket", 1, 60_000, 1),))
    for i in range(2):
        client.enqueue("q", "m:f", job_id=f"job-{i}")
    keys = client.keys("q")
    assert run(client.redis, keys.reserve("w1", "t1", LEASE, rules))[0][:2] == [1, b"job-0"]  # the one start
    call = settle_and_reserve(keys.ack("job-0", "t1", "w1", TTL, "", 1), keys.reserve("w1", "t2", LEASE, rules))
    settled, (code, wait_ms) = run(client.redis, call)[0]
    assert settled == 1 and code == 2 and 50_000 < wait_ms <= 61_000
    tickets = client.redis.hgetall(keys.key("tickets"))
    settled, (code, again_ms) = run(client.redis, call)[0]
    assert settled == 1 and code == 2 and again_ms <= wait_ms
    assert client.redis.hgetall(keys.key("tickets")) == tickets  # the same start, not a second one
    assert client.counts("q")["throttled_total"] == 1


def test_a_partition_hands_a_key_on_and_reserves_its_next_job_in_the_same_call(client):
    client.redis.set(client.keys("q").partitions_key, 4)
    for i in range(2):
        client.enqueue("q", "m:f", i, key="k", job_id=f"k-{i}")
    lane = client.keys("q").part(partition_of("k", 4))
    assert run(client.redis, lane.reserve("w1", "t1", LEASE))[0][:2] == [1, b"k-0"]
    call = settle_and_reserve(lane.ack("k-0", "t1", "w1", TTL, "", 1), lane.reserve("w1", "t2", LEASE))
    settled, reserved = run(client.redis, call)[0]
    assert settled == 1 and reserved[:2] == [1, b"k-1"]  # its key's next job, in order
    assert client.job("k-0")["state"] == "done" and client.job("k-1")["state"] == "active"


def test_calls_of_two_hash_tags_or_other_scripts_are_refused():
    q = QueueKeys("p", "q")
    ack = q.ack("j", "t", "w", TTL, "", 1)
    for settle, reserve in [(ack, QueueKeys("p", "other").reserve("w", "t2", LEASE)),
                            (q.part(0).ack("j", "t", "w", TTL, "", 1), q.part(1).reserve("w", "t2", LEASE)),
                            (q.part(0).ack("j", "t", "w", TTL, "", 1), q.reserve("w", "t2", LEASE)),
                            (q.reserve("w", "t", LEASE), q.reserve("w", "t2", LEASE)),
                            (ack, q.tick(TTL))]:
        with pytest.raises(ValueError):
            settle_and_reserve(settle, reserve)
    # a named limiter's keys live under a tag of their own: the reserve's business, as when alone
    named = Rules(limits=(Limit("{p:limiter:api}:rate:0:token_bucket:5/1000", "token_bucket", 5, 1000, 1),))
    call = settle_and_reserve(ack, q.reserve("w", "t2", LEASE, named))
    assert call.keys[-1] == "{p:limiter:api}:rate:0:token_bucket:5/1000"
    assert list(call.args[:3]) == ["ack", len(ack.keys), len(ack.args)]


def test_a_redis_that_never_saw_the_script_runs_it(tmp_path):
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        c = Client(redis.Redis(port=server.port), prefix="fresh")
        keys = start(c)
        assert ack_and_reserve(c, keys)[0] == 1
        c.redis.script_flush()  # a restarted Redis forgets its scripts
        assert ack_and_reserve(c, keys, token="t3")[0] == 1  # a retried ack: still settled
    finally:
        server.stop()


def test_on_a_cluster_each_partition_drains_with_one_call_per_job_in_key_order(redis_cluster):
    """Each call goes whole to the shard of its lane's slot (routed by its first key)."""
    from governor.protocol.connection import connect

    c = Client(connect(redis_cluster.url), prefix=f"t{uuid.uuid4().hex[:10]}")
    c.redis.set(c.keys("q").partitions_key, 4)
    names = ["alice", "bob", "carol", "dave", "erin"]
    c.enqueue_many("q", [{"handler": "m:f", "key": k, "job_id": f"{k}-{i}"} for i in range(2) for k in names])
    order = []
    for p in range(4):
        lane = c.keys("q").part(p)
        reply, n = run(c.redis, lane.reserve("w", "t0", LEASE, partitions=4, cluster=True))[0], 0
        while reply[0] == 1:
            order.append(reply[1].decode())
            n += 1
            call = settle_and_reserve(lane.ack(order[-1], f"t{n - 1}", "w", TTL, "", 1),
                                      lane.reserve("w", f"t{n}", LEASE, partitions=4, cluster=True))
            settled, reply = run(c.redis, call)[0]
            assert settled == 1
    assert sorted(order) == sorted(f"{k}-{i}" for i in range(2) for k in names)
    assert all(order.index(f"{k}-0") < order.index(f"{k}-1") for k in names)
    assert c.counts("q")["done_total"] == 10
