"""The call a worker with several jobs in flight makes (``flight``: settle every finished job,
reserve for every free slot, one script call), against a real redis-server: it takes what is
there and stops at the first reply that is not a job, settles each job under its own slot's
lease, is safe to re-send after a lost reply, and starts nothing beside a suspect."""

from __future__ import annotations

import json

import pytest

from governor.protocol.queue import FailOutcome, QueueKeys, run
from governor.protocol.scripts import flight
from governor.supervise.runtable import owner_of, slot_id

TTL = 3_600_000
LEASE = 60_000
W = "host:boot:ns:123:456"


def fill(client, n: int, **enqueue) -> QueueKeys:
    for i in range(n):
        client.enqueue("q", "m:f", i, job_id=f"job-{i}", **enqueue)
    return client.keys("q")


def reserve_call(keys: QueueKeys):
    return keys.reserve(W, "", LEASE)


def slots(first: int, n: int, round_: str = "a") -> list[tuple[str, str]]:
    return [(slot_id(W, i), f"tok-{round_}-{i}") for i in range(first, first + n)]


def test_reserves_for_every_free_slot_and_stops_at_the_first_that_finds_nothing(client):
    keys = fill(client, 3)
    reply = run(client.redis, flight([], slots(0, 5), reserve_call(keys)))[0]
    reserved = reply[-1]
    assert [r[1] for r in reserved[:3]] == [b"job-0", b"job-1", b"job-2"]
    assert reserved[3][0] == 0 and len(reserved) == 4  # nothing waits: the last reply, no fifth call
    leases = {k.decode(): v.decode().split()[0] for k, v in client.redis.hgetall(keys.leases).items()}
    assert leases == {slot_id(W, 0): "job-0", slot_id(W, 1): "job-1", slot_id(W, 2): "job-2"}
    assert {owner_of(holder) for holder in leases} == {W}
    for i in range(3):
        assert json.loads(client.redis.hget(keys.meta, f"job-{i}"))["worker"] == slot_id(W, i)


def test_settles_every_finished_job_and_refills_in_the_same_call(client):
    keys = fill(client, 5)
    run(client.redis, flight([], slots(0, 3), reserve_call(keys)))
    settles = [keys.ack(f"job-{i}", f"tok-a-{i}", slot_id(W, i), TTL, json.dumps({"n": i}), 5, runtimes=("m:f", 10))
               for i in (0, 2)]
    settles.append(keys.fail("job-1", "tok-a-1", slot_id(W, 1), {"error": "E"}, "retry", 60_000, "exception", 3))
    reply = run(client.redis, flight(settles, slots(0, 3, "b"), reserve_call(keys)))[0]
    assert reply[:3] == [1, 1, FailOutcome.RETRYING]
    assert [r[1] for r in reply[3][:2]] == [b"job-3", b"job-4"]
    assert client.job("job-0", "q")["state"] == "done" and client.job("job-2", "q")["result"] == {"n": 2}
    assert client.job("job-1", "q")["state"] == "delayed"


def test_a_call_re_sent_after_a_lost_reply_answers_the_same_and_changes_nothing(client):
    keys = fill(client, 4)
    run(client.redis, flight([], slots(0, 2), reserve_call(keys)))
    call = flight([keys.ack("job-0", "tok-a-0", slot_id(W, 0), TTL, "", 5)], slots(0, 1, "b"), reserve_call(keys))
    first = run(client.redis, call)[0]
    again = run(client.redis, call)[0]
    assert first[0] == 1 and again[0] == 1
    assert first[1][0][1] == again[1][0][1] == b"job-2"  # the lease handed back, not a second job
    assert client.counts("q")["waiting"] == 1 and client.counts("q")["active"] == 2


def test_a_stale_token_fences_only_its_own_settle(client):
    keys = fill(client, 2)
    run(client.redis, flight([], slots(0, 2), reserve_call(keys)))
    settles = [keys.ack("job-0", "not-its-token", slot_id(W, 0), TTL, "", 5),
               keys.ack("job-1", "tok-a-1", slot_id(W, 1), TTL, "", 5)]
    reply = run(client.redis, flight(settles, [], None))[0]
    assert reply[:2] == [0, 1]
    assert client.job("job-0", "q")["state"] == "active"


def test_nothing_is_reserved_beside_a_suspect(client):
    keys = fill(client, 3)
    run(client.redis, flight([], slots(0, 1), reserve_call(keys)))
    # job-0's worker was killed with others running: back, uncharged, a suspect (at the front)
    out = run(client.redis, keys.fail("job-0", "tok-a-0", slot_id(W, 0), {"error": "oom"}, "suspect", 0,
                                      "memory_hard", 3))[0]
    assert out == FailOutcome.REQUEUED
    record = client.job("job-0", "q")
    assert record["suspect"] == 1 and record["attempts"] == 0
    reply = run(client.redis, flight([], slots(0, 3, "b"), reserve_call(keys)))[0]
    assert [r[1] for r in reply[-1]] == [b"job-0"]  # the suspect, and nothing after it
    assert client.counts("q")["waiting"] == 2


def test_calls_of_two_lanes_are_refused(client):
    keys = fill(client, 1)
    other = client.keys("other")
    with pytest.raises(ValueError, match="one hash tag"):
        flight([other.ack("x", "t", W, TTL, "", 1)], slots(0, 1), reserve_call(keys))
