"""Elastic pools end to end: a real master scaling real workers on a real backlog."""

from __future__ import annotations

import collections
import signal
import time

import pytest
from test_config import BASE, check

from fleet import Fleet
from harness import free_port, http_get, wait_for

ELASTIC = {"up_wait": "1s", "up_cooldown": "1s", "down_idle": "2s", "down_cooldown": "1s"}


def pool_status(governor, queue: str) -> dict:
    return next(p for p in governor.status()["pools"] if p["queue"] == queue)


def scale(governor, queue: str) -> dict:
    return pool_status(governor, queue)["autoscale"]


def jobs(n: int, seconds: float, tag: str = "j") -> list[dict]:
    return [{"handler": "tasks:sleep_then_record", "args": [f"{tag}{i}", seconds]} for i in range(n)]


def test_a_backlog_scales_the_pool_to_max_and_idleness_brings_it_back_to_min(governor):
    listen = f"127.0.0.1:{free_port()}"
    governor.start({"media": {"concurrency": {"min": 1, "max": 6}, "autoscale": ELASTIC,
                              "recycle": {"max_jobs": "off"}}}, metrics={"listen": listen})
    c = governor.client
    c.enqueue_many("media", jobs(60, 0.5))
    formed = time.monotonic()
    wait_for(lambda: len(governor.workers("media")) == 6, 5, "the pool to reach 6 workers")
    up = time.monotonic() - formed
    wait_for(lambda: len(governor.workers("media", ("idle", "busy"))) == 6, 5, "6 workers up")
    wait_for(lambda: c.counts("media")["done_total"] == 60, 30, "the backlog to drain", interval=0.1)
    drained = time.monotonic()
    wait_for(lambda: scale(governor, "media")["desired"] == 1 and len(governor.workers("media")) == 1,
             20, "the pool back at min", interval=0.1)
    down = time.monotonic() - drained
    runs = collections.Counter(governor.lines("done"))
    assert len(runs) == 60 and set(runs.values()) == {1}
    assert c.counts("media")["retried_total"] == 0  # no job interrupted by a scale-down
    st = scale(governor, "media")
    steps = [(d["direction"], d["from"], d["to"], d["reason"]) for d in st["history"]]
    ups = [s for s in steps if s[0] == "up"]
    downs = [s for s in steps if s[0] == "down"]
    assert ups[0][1] == 1 and ups[-1][2] == 6 and all(s[3] in ("oldest_wait", "depth") for s in ups)
    assert [s[2] - s[1] for s in ups] == [1, 2, 2]  # steps double while the overload lasts (capped at max)
    assert downs == [("down", n, n - 1, "idle") for n in range(6, 1, -1)]  # one at a time, idle ones
    assert all("oldest_wait" in d["signals"] and "waiting" in d["signals"] for d in st["history"])
    assert pool_status(governor, "media")["exits"].get("scale_down") == 5
    times = [d["at"] for d in st["history"] if d["direction"] == "down"]
    assert all(b - a >= 0.9 for a, b in zip(times, times[1:], strict=False)), times  # down_cooldown between steps
    log = governor.log()
    assert "scaling up 1 -> 2 (oldest_wait" in log and "scaling down 2 -> 1 (idle" in log
    print(f"\nscale-up to 6 in {up:.1f}s after the backlog formed; back to 1 in {down:.1f}s after it drained")
    status, body = http_get(f"http://{listen}/metrics")
    text = body.decode()
    assert 'governor_scale_decisions_total{direction="up",queue="media",reason="oldest_wait"}' in text
    assert 'governor_scale_decisions_total{direction="down",queue="media",reason="idle"} 5.0' in text
    assert 'governor_pool_max_workers{queue="media"} 6.0' in text
    assert 'governor_pool_min_workers{queue="media"} 1.0' in text


def test_a_host_memory_guard_holds_the_pool_at_min_and_status_says_why(governor):
    governor.start({"media": {"concurrency": {"min": 1, "max": 4}, "autoscale": ELASTIC}},
                   host={"min_available_memory": "100000GiB"})
    c = governor.client
    c.enqueue_many("media", jobs(8, 0.5))
    wait_for(lambda: scale(governor, "media")["held"] == "host memory", 6, "the guard to hold the pool")
    seen = set()
    while c.counts("media")["done_total"] < 8:
        seen.add(len(governor.workers("media")))
        time.sleep(0.1)
    assert seen == {1}
    assert scale(governor, "media")["desired"] == 1
    log = governor.log()
    assert "not scaling up (held: host memory)" in log and "min_available_memory 100000GiB" in log


def test_status_shows_an_elastic_pool_and_why_it_is_held(governor):
    governor.start({"media": {"concurrency": {"min": 1, "max": 4}, "autoscale": ELASTIC}},
                   host={"min_available_memory": "100000GiB"})
    governor.client.enqueue_many("media", jobs(6, 1.0))
    wait_for(lambda: scale(governor, "media")["held"] == "host memory", 6, "the guard to hold the pool")
    out = governor_status_text(governor)
    assert "elastic 1-4" in out and "held: host memory" in out, out


def governor_status_text(governor) -> str:
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "governor", "status", "-c", str(governor.config_path)],
                          capture_output=True, text=True, timeout=30).stdout


def test_a_backlog_that_comes_and_goes_does_not_make_the_pool_flap(governor):
    governor.start({"media": {"concurrency": {"min": 1, "max": 4},
                              "autoscale": {"up_wait": "500ms", "up_cooldown": "1s", "down_idle": "1s",
                                            "down_cooldown": "10s"}}})
    c = governor.client
    t0 = time.monotonic()
    for burst in range(6):  # every 2 s for 12 s: 6 jobs of 0.4 s, a backlog for one worker
        c.enqueue_many("media", jobs(6, 0.4, tag=f"b{burst}-"))
        time.sleep(max(0.0, t0 + 2 * (burst + 1) - time.monotonic()))
    wait_for(lambda: c.counts("media")["done_total"] == 36, 20, "the bursts to finish")
    history = scale(governor, "media")["history"]
    downs = [d for d in history if d["direction"] == "down"]
    ups = [d for d in history if d["direction"] == "up"]
    assert len(ups) <= 3  # 1 -> 4 takes at most three steps, and it never has to climb again...
    assert len(downs) <= 2  # ...because a step down waits 10 s after any step
    turns = sum(1 for a, b in zip(history, history[1:], strict=False) if a["direction"] != b["direction"])
    assert turns <= 1, history


def test_sighup_moves_the_pool_into_a_new_range_without_interrupting_a_job(governor):
    queue = {"concurrency": {"min": 1, "max": 6}, "autoscale": ELASTIC}
    governor.start({"media": queue})
    c = governor.client
    long_job = c.enqueue("media", "tasks:sleep_then_record", "long", 3)
    wait_for(lambda: governor.lines("start") == ["long"], 5, "the long job to start")
    governor.write({"media": {**queue, "concurrency": {"min": 3, "max": 4}}})
    governor.signal(signal.SIGHUP)
    wait_for(lambda: len(governor.workers("media", ("idle", "busy"))) == 3, 10, "the pool at its new min")
    assert scale(governor, "media")["min"] == 3 and scale(governor, "media")["max"] == 4
    governor.write({"media": {**queue, "concurrency": {"min": 1, "max": 2}}})
    governor.signal(signal.SIGHUP)
    wait_for(lambda: len(governor.workers("media")) == 2, 10, "the pool under its new max")
    wait_for(lambda: governor.lines("done") == ["long"], 10, "the long job to finish")
    record = c.job(long_job)
    assert record["state"] == "done" and record["attempts"] == 1  # never interrupted
    assert "elastic, 3 to 4 workers" in governor.log()


@pytest.mark.parametrize("queue, path, words", [
    ("{concurrency: {min: 5, max: 2}}", "queues.email.concurrency", "min (5) is above max (2)"),
    ("{concurrency: {min: 1}}", "queues.email.concurrency.max", "both min and max"),
    ("{concurrency: 3, autoscale: {up_wait: 1s}}", "queues.email.autoscale", "concurrency: {min: N, max: M}"),
    ("{concurrency: {min: 1, max: 3}, autoscale: {up_wait: -1s}}", "queues.email.autoscale.up_wait", "'-1s'"),
    ("{concurrency: {min: 1, max: 3}, autoscale: {up_depth: -5}}", "queues.email.autoscale.up_depth", "-5"),
    ("{concurrency: {min: 1, max: 3}, autoscale: {down_cooldown: -1m}}", "queues.email.autoscale.down_cooldown", "'-1m'"),
    ("{concurrency: {min: 1, max: 3}, autoscale: {up_wait: off, up_depth: off}}", "queues.email.autoscale", "both off"),
    ("{concurrency: {min: 1, max: 3}, autoscale: {up_wiat: 1s}}", "queues.email.autoscale.up_wiat", "did you mean 'up_wait'"),
    ("{concurrency: 1, timeout: {adaptive: {percentile: 100}}}", "queues.email.timeout.adaptive.percentile", "between 0 and 100"),
    ("{concurrency: 1, timeout: {adaptive: {percentile: 0}}}", "queues.email.timeout.adaptive.percentile", "between 0 and 100"),
    ("{concurrency: 1, timeout: {adaptive: {factor: 0.5}}}", "queues.email.timeout.adaptive.factor", ">= 1"),
    ("{concurrency: 1, timeout: {adaptive: {min: 10m, max: 1m}}}", "queues.email.timeout.adaptive", "min (10m) is above max (1m)"),
    ("{concurrency: 1, timeout: {hard: off, adaptive: on}}", "queues.email.timeout.adaptive", "set timeout.hard"),
])
def test_check_rejects_bad_elastic_and_adaptive_settings_naming_the_path(tmp_path, queue, path, words):
    out = check(tmp_path, BASE.replace("{concurrency: 3}", queue))
    assert out.returncode == 2, out.stdout
    assert f"{path}:" in out.stderr and words in out.stderr, out.stderr


def test_check_rejects_a_bad_host_guard(tmp_path):
    out = check(tmp_path, BASE + "host: {max_cpu: 150%}\n")
    assert out.returncode == 2 and "host.max_cpu:" in out.stderr and "150%" in out.stderr


def test_a_reload_with_a_bad_range_keeps_the_old_one(governor):
    queue = {"concurrency": {"min": 2, "max": 4}, "autoscale": ELASTIC}
    governor.start({"media": queue})
    governor.write({"media": {**queue, "concurrency": {"min": 5, "max": 3}}})
    governor.signal(signal.SIGHUP)
    wait_for(lambda: "reload failed" in governor.log(), 5, "the reload to fail")
    assert "queues.media.concurrency: min (5) is above max (3)" in governor.log()
    assert scale(governor, "media")["min"] == 2 and len(governor.workers("media")) == 2


# -- issue 21, item 7: an elastic partitioned pool at min 0 ---------------------------------------

FAST = {"up_wait": "200ms", "up_cooldown": "300ms", "down_idle": "500ms", "down_cooldown": "300ms"}


def keyed(n: int, seconds: float, tag: str) -> list[dict]:
    return [{"handler": "tasks:sleep_then_record", "args": [f"{tag}{i}", seconds], "key": f"k{i}"}
            for i in range(n)]


def test_a_partitioned_pool_at_min_zero_scales_up_from_zero_and_again_after_scaling_down(governor):
    governor.start({"parts": {"concurrency": {"min": 0, "max": 2}, "partitions": 4, "autoscale": FAST,
                              "recycle": {"max_jobs": "off"}}}, lease="2s")  # (watched: looked at each 1 s)
    c = governor.client
    wait_for(lambda: c.partitions("parts") == 4, 5, "the master to register the partition count")
    c.enqueue_many("parts", keyed(6, 0.2, "a"))
    wait_for(lambda: len(governor.lines("done")) == 6, 15, "the backlog to run from a pool at 0", interval=0.1)
    wait_for(lambda: governor.workers("parts") == [] and scale(governor, "parts")["desired"] == 0, 15,
             "the pool back at 0", interval=0.1)
    c.enqueue_many("parts", keyed(3, 0.1, "b"))  # and once more, after scaling down to 0
    wait_for(lambda: len(governor.lines("done")) == 9, 15, "the pool to scale up from 0 again", interval=0.1)
    ups = [d for d in scale(governor, "parts")["history"] if d["direction"] == "up"]
    assert ups[0]["from"] == 0 and any(d["from"] == 0 for d in ups[1:]), ups
    assert "scaling up 0 -> 1" in governor.log()


def leases(g, queue: str) -> dict:
    """A master's partitions of the queue (held, watched), {} until its control socket answers."""
    try:
        return g.status()["partitions"][queue]
    except OSError:
        return {}


def test_a_pool_at_zero_in_a_fleet_takes_up_the_partitions_nobody_serves_and_never_hoards(tmp_path, redis_server):
    """Host a (elastic, min 0) watches the partitions no serving master holds; host b (one worker,
    at most 2 partitions) takes its share from under a at once; a scales up for the other two."""
    from governor.protocol.queue import partition_of
    fleet = Fleet(tmp_path, redis_server.url)
    try:
        a = fleet.master("a", {"parts": {"concurrency": {"min": 0, "max": 2}, "partitions": 4,
                                         "autoscale": FAST}}).start()
        wait_for(lambda: leases(a, "parts").get("watched") == [0, 1, 2, 3], 5, "a to watch all 4")
        b = fleet.master("b", {"parts": {"concurrency": 1, "partitions": 4, "partitions_per_host": 2}}).start()
        wait_for(lambda: len(leases(b, "parts").get("held", [])) == 2, 5, "b to take 2 partitions")
        theirs = b.status()["partitions"]["parts"]["held"]
        orphans = sorted(set(range(4)) - set(theirs))
        wait_for(lambda: a.status()["partitions"]["parts"]["watched"] == orphans, 5, "a to watch only the rest")
        assert a.status()["partitions"]["parts"]["held"] == [] and a.workers("parts") == []
        keys = {p: next(f"k{i}" for i in range(1000) if partition_of(f"k{i}", 4) == p) for p in range(4)}
        for p, k in keys.items():
            a.client.enqueue("parts", "tasks:sleep_then_record", f"p{p}", 0.1, key=k)
        wait_for(lambda: len(a.lines("done")) + len(b.lines("done")) == 4, 15, "every partition's job to run",
                 interval=0.1)
        assert sorted(b.lines("done")) == [f"p{p}" for p in theirs]  # b kept its own ...
        assert sorted(a.lines("done")) == [f"p{p}" for p in orphans]  # ... a grew for the others
        assert b.status()["partitions"]["parts"]["held"] == theirs and "released" not in b.log()
        assert "scaling up 0 -> 1" in a.log()
    finally:
        fleet.stop()


# -- issue 21, item 8: no growth for jobs that cannot start ----------------------------------------

def held_or_grown(governor, queue: str, why: str) -> bool:
    """The point where the old code stepped up: the step is held for ``why``, or was taken."""
    st = scale(governor, queue)
    return st["held"] == why or st["desired"] > 1


def watch_window(governor, queue: str, seconds: float) -> set[int]:
    """The pool's worker counts (and desired sizes) seen over a window, from status."""
    seen: set[int] = set()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        st = pool_status(governor, queue)
        seen.update({len([w for w in st["workers"] if w["state"] in ("starting", "idle", "busy")]),
                     st["autoscale"]["desired"]})
        time.sleep(0.05)
    return seen


def test_a_paused_queue_with_a_backlog_does_not_grow_the_pool_and_status_says_why(governor):
    governor.start({"media": {"concurrency": {"min": 1, "max": 4}, "autoscale": FAST}},
                   lease="2s")  # (an idle queue is looked at every lease / 2)
    c = governor.client
    c.pause("media")
    c.enqueue_many("media", jobs(8, 0.2))
    # where the old code stepped up (oldest_wait over up_wait), the queue holds the step instead
    wait_for(lambda: held_or_grown(governor, "media", "paused"), 6, "the pause to hold the pool")
    assert watch_window(governor, "media", 3 * 0.3) == {1}  # three up_cooldowns: never grown
    assert scale(governor, "media")["held"] == "paused"
    assert "held: paused" in governor_status_text(governor)
    assert "not scaling up (held: paused)" in governor.log()
    c.resume("media")  # the same backlog, startable now: the pool grows for it
    wait_for(lambda: scale(governor, "media")["desired"] > 1, 6, "the pool to grow once resumed")
    wait_for(lambda: c.counts("media")["done_total"] == 8, 15, "the backlog to run")


def test_a_queue_at_its_global_concurrency_does_not_grow_on_any_host(tmp_path, redis_server):
    """global_concurrency: 1 across two hosts: b's worker and a's take turns at the one slot; a
    (elastic) never grows past what can run, the fleet-wide running count included."""
    fleet = Fleet(tmp_path, redis_server.url)
    try:
        a = fleet.master("a", {"q": {"concurrency": {"min": 1, "max": 4}, "global_concurrency": 1,
                                     "autoscale": FAST}}).start()
        fleet.master("b", {"q": {"concurrency": 1, "global_concurrency": 1}}).start()
        a.client.enqueue_many("q", jobs(10, 0.3))
        wait_for(lambda: held_or_grown(a, "q", "global_concurrency"), 6, "the slot to hold the pool")
        assert watch_window(a, "q", 3 * 0.3) == {1}
        assert scale(a, "q")["held"] == "global_concurrency"
        assert "held: global_concurrency" in governor_status_text(a)
        assert "not scaling up (held: global_concurrency): " in a.log() and "global_concurrency 1" in a.log()
    finally:
        fleet.stop()


def test_a_rate_limited_queue_does_not_grow_past_what_the_limit_lets_start(governor):
    governor.start({"media": {"concurrency": {"min": 1, "max": 4}, "autoscale": FAST,
                              "rate_limit": {"limit": 2, "per": "1s"}}}, lease="2s")
    c = governor.client
    c.enqueue_many("media", jobs(12, 0.01))
    wait_for(lambda: held_or_grown(governor, "media", "rate limit"), 6, "the limit to hold the pool")
    assert watch_window(governor, "media", 3 * 0.3) == {1}
    assert scale(governor, "media")["held"] == "rate limit"
    assert "not scaling up (held: rate limit)" in governor.log()
