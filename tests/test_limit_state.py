"""Issue 21, items 9 and W4: a rate limit's state survives a reload that changes its `limit`
(the starts already counted stay counted), and the tickets of workers that are gone do not
stay in the tickets hash. Real masters, real SIGHUP, real redis-server."""

from __future__ import annotations

import signal

import pytest

from governor.protocol.queue import QueueKeys

from harness import wait_for


def _throttled(governor, queue: str) -> int:
    return int(governor.client.redis.hget(governor.client.keys(queue).stats, "throttled") or 0)


@pytest.mark.parametrize("algorithm,per", [("sliding_window", "1h"), ("fixed_window", "7d")])
def test_raising_a_limit_by_reload_keeps_the_starts_already_counted(governor, algorithm, per):
    queue = {"w": {"concurrency": 1, "rate_limit": {"limit": 3, "per": per, "algorithm": algorithm}}}
    governor.start(queue)
    governor.client.enqueue_many("w", [{"handler": "tasks:record", "args": [f"j{i}"]} for i in range(10)])
    wait_for(lambda: len(governor.lines("done")) == 3 and _throttled(governor, "w") > 0, 10,
             "three starts, then the worker throttled")
    before = {w["pid"] for w in governor.workers("w")}
    queue["w"]["rate_limit"]["limit"] = 4
    governor.write(queue)
    governor.signal(signal.SIGHUP)
    wait_for(lambda: (ws := governor.workers("w", ("idle", "busy"))) and not before & {w["pid"] for w in ws},
             10, "the worker replaced with the new limit")
    tickets = governor.client.keys("w").key("tickets")

    def new_ticket() -> bool:  # a worker id is host:boot:pidns:pid:start
        return any(int(w.decode().split(":")[3]) not in before for w in governor.client.redis.hkeys(tickets))
    # at most one more start within the window (none with a sliding window: the old worker's
    # ticket reserved a start within it, still counted), then the new worker is throttled
    wait_for(new_ticket, 10, "the new worker throttled")
    assert 3 <= len(governor.lines("done")) <= 4, governor.lines("done")


def test_a_worker_that_exits_leaves_no_ticket(governor):
    queue = {"w": {"concurrency": 2, "rate_limit": {"limit": 1, "per": "1h"}}}
    governor.start(queue)
    tickets = governor.client.keys("w").key("tickets")
    governor.client.enqueue_many("w", [{"handler": "tasks:record", "args": [f"j{i}"]} for i in range(3)])
    wait_for(lambda: governor.client.redis.hlen(tickets) == 2, 10, "both workers holding a ticket")
    governor.signal(signal.SIGTERM)
    assert governor.wait_exit() == 0
    assert governor.client.redis.hgetall(tickets) == {}


def test_the_tickets_of_dead_workers_are_swept(governor):
    queue = {"w": {"concurrency": 1, "rate_limit": {"limit": 1, "per": "1h"}}}
    governor.start(queue)
    keys = QueueKeys(governor.prefix, "w")
    now_ms = int(governor.client.redis.time()[0]) * 1000
    # left by workers of hosts that died: their times passed, nobody will come for them
    governor.client.redis.hset(keys.key("tickets"), mapping={
        f"deadhost:{i}:1:1:1": now_ms - 5000 - i for i in range(300)})
    governor.client.redis.hset(keys.key("tickets"), "farhost:1:1:1:1", now_ms + 3_600_000)  # still to come
    governor.client.enqueue_many("w", [{"handler": "tasks:record", "args": [k]} for k in "xy"])  # (y waits: busy ticks)
    wait_for(lambda: not any(w.startswith(b"deadhost") for w in governor.client.redis.hkeys(keys.key("tickets"))),
             15, "the stale tickets swept")
    assert governor.client.redis.hexists(keys.key("tickets"), "farhost:1:1:1:1")
