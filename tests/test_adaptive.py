"""Adaptive timeouts: limits learnt from real runs in a real Redis, enforced by a real master."""

from __future__ import annotations

import time

from governor.protocol.queue import run
from governor.supervise.handlerstats import ADAPTIVE_REFRESH
from governor.supervise.handlerstats import STATS_EVERY as ADAPTIVE_EVERY

from harness import wait_for

HANDLER = "tasks:sleep_then_record"


def learn(client, keys, handlers, *, percentile=95, factor=3, min_ms=1000, max_ms=600_000, samples=50,
          max_kills=3, window_ms=600_000):
    call = keys.learn(handlers, percentile, factor, min_ms, max_ms, samples, max_kills, window_ms)
    return [list(map(int, row)) for row in run(client.redis, call)[0]]


def test_the_limit_is_a_clamped_percentile_of_successful_runs_per_handler(client):
    keys = client.keys("q")
    client.redis.lpush(keys.runtimes("a:fast"), *range(1, 101))  # 1..100 ms
    client.redis.lpush(keys.runtimes("a:slow"), *(v * 1000 for v in range(1, 101)))  # 1..100 s
    (fast, slow) = learn(client, keys, ["a:fast", "a:slow"], samples=100)
    n, p50, p95, p99, pn, limit, kills, fallback = fast
    assert (n, p50, p95, p99) == (100, 50, 95, 99)
    assert limit == 1000  # 95 ms * 3 is under min: clamped to 1 s
    assert slow[5] == 95_000 * 3  # the other handler's runs never mix in
    assert client.redis.hget(keys.adaptive, "a:fast") == b"1000"
    assert learn(client, keys, ["a:fast"], samples=101)[0][5] == 0  # too few runs: none learnt...
    assert client.redis.hget(keys.adaptive, "a:fast") is None  # ...and none left for workers to use


def test_censored_kills_raise_the_limit_and_too_many_fall_back(client):
    keys = client.keys("q")
    client.redis.lpush(keys.runtimes("a:h"), *([100] * 90))
    assert learn(client, keys, ["a:h"], samples=90, min_ms=1)[0][5] == 300
    for i in range(10):  # ten runs killed at that limit: each needed at least 300 ms
        run(client.redis, keys.censor("a:h", 300, 1000, f"job{i}"))
    row = learn(client, keys, ["a:h"], samples=90, min_ms=1, max_kills=11)[0]
    assert row[5] == 900 and row[6] == 10 and row[7] == 0  # p95 is now a censored 300: it went up
    row = learn(client, keys, ["a:h"], samples=90, min_ms=1, max_kills=10)[0]
    assert row[5] == 0 and row[7] == 1  # ten kills in the window: back on the configured limit
    assert client.redis.hget(keys.adaptive, "a:h") is None
    time.sleep(0.01)
    row = learn(client, keys, ["a:h"], samples=90, min_ms=1, max_kills=10, window_ms=5)
    assert row[0][6] == 0 and row[0][5] == 900  # the kills aged out of the window: learnt again


def adaptive(governor, queue="api"):
    return governor.status().get("handlers", {}).get(queue, {}).get(HANDLER) or {}


def test_a_slow_run_is_killed_at_the_learnt_limit_and_a_fresh_handler_keeps_the_configured_one(governor):
    governor.start({"api": {"concurrency": 2, "retry": {"max": 0}, "timeout": {
        "soft": "off", "hard": "60s",
        "adaptive": {"percentile": 95, "factor": 3, "min": "1s", "max": "10m", "samples": 50}}}})
    c = governor.client
    c.enqueue_many("api", [{"handler": HANDLER, "args": [f"f{i}", 0.05 + 0.005 * (i % 11)]} for i in range(60)])
    wait_for(lambda: c.counts("api")["done_total"] == 60, 20, "the fast jobs")
    learnt = wait_for(lambda: adaptive(governor).get("limit"), ADAPTIVE_EVERY + 5, "a learnt limit")
    t = adaptive(governor)
    assert learnt == 1.0 and t["samples"] == 60 and 0.05 <= t["p50"] <= 0.1 and t["p95"] <= 0.12
    time.sleep(ADAPTIVE_REFRESH + 0.5)  # every worker has read it by its next job
    fresh = c.enqueue("api", "tasks:catch_soft_timeout", "fresh", 2)
    slow = c.enqueue("api", HANDLER, "slow", 5)
    wait_for(lambda: c.job(slow)["state"] == "dead", 10, "the slow job to be killed")
    err = c.job(slow)["errors"][0]
    assert err["reason"] == "timeout_hard" and err["adaptive"] is True and err["limit_s"] == 1.0
    assert 1.0 <= err["seconds"] < 1.5, err
    wait_for(lambda: c.job(fresh)["state"] == "done", 10, "the fresh handler's job")  # 2 s, under 60 s
    assert "learnt a hard limit of 1.000s from 60 runs" in governor.log()
    assert b"c1000" in c.redis.lrange(c.keys("api").runtimes(HANDLER), 0, -1)  # the kill, censored


def test_a_handler_killed_too_often_at_its_learnt_limit_falls_back_to_the_configured_one(governor):
    governor.start({"api": {"concurrency": 2, "retry": {"max": 0}, "timeout": {
        "soft": "off", "hard": "60s", "adaptive": {"factor": 2, "min": "500ms", "samples": 20, "max_kills": 2}}}})
    c = governor.client
    c.enqueue_many("api", [{"handler": HANDLER, "args": [f"f{i}", 0.02]} for i in range(20)])
    wait_for(lambda: adaptive(governor).get("limit") == 0.5, 20, "a learnt limit of 500ms")
    time.sleep(ADAPTIVE_REFRESH + 0.5)
    killed = [c.enqueue("api", HANDLER, f"slow{i}", 3) for i in range(2)]
    wait_for(lambda: all(c.job(k)["state"] == "dead" for k in killed), 10, "two adaptive kills")
    wait_for(lambda: adaptive(governor).get("fallback"), ADAPTIVE_EVERY + 5, "the fall back")
    assert adaptive(governor)["limit"] is None and adaptive(governor)["kills"] == 2
    assert "back on the configured limit (60.0s)" in governor.log()
    time.sleep(ADAPTIVE_REFRESH + 0.5)
    ok = c.enqueue("api", HANDLER, "after", 1.5)  # over the learnt 0.5 s, under the configured 60 s
    wait_for(lambda: c.job(ok)["state"] == "done", 10, "a slow run under the configured limit")


def test_a_poisoned_learnt_limit_is_bounded_and_no_worker_dies_of_it(governor):
    """A 400-digit value in the learnt-limits hash (anyone with write access can put one there)
    made every worker die with OverflowError on its next job, and its jobs were dead-lettered
    as crashed (issue 21, item 16): values read back are bounded before use."""
    governor.start({"api": {"concurrency": 1, "retry": {"max": 0}, "timeout": {
        "soft": "off", "hard": "60s",
        "adaptive": {"percentile": 95, "factor": 3, "min": "1s", "max": "10m", "samples": 50}}}})
    c = governor.client
    keys = c.keys("api")
    c.redis.hset(keys.adaptive, mapping={"tasks:record": "9" * 400, "tasks:fail": "-5", "x": "junk"})
    ids = [c.enqueue("api", "tasks:record", f"r{i}") for i in range(3)]
    wait_for(lambda: all(c.job(i)["state"] == "done" for i in ids), 15, "the jobs to run")
    pool = governor.status()["pools"][0]
    assert "crashed" not in pool["exits"], pool["exits"]
    assert sorted(governor.lines("done")) == ["r0", "r1", "r2"]
