"""Operating on jobs from the CLI: list, read, retry, purge, cancel; bad input changes nothing."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from harness import wait_for

APP = {"path": ["."], "handlers": ["tasks:*", "ops:*"]}


def gov(governor, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "governor", *argv, "-c", str(governor.config_path)],
                          capture_output=True, text=True, timeout=60, input=stdin)


def dead(governor, queue: str) -> int:
    return governor.client.counts(queue)["dead"]


def test_dead_jobs_are_listed_retried_after_a_fix_and_purged(governor):
    governor.add_app("ops_broken", "ops")  # v1 of the module ops
    queues = {"mail": {"concurrency": 2, "retry": {"max": 0}}}
    governor.start(queues, app=APP)
    c = governor.client
    c.enqueue_many("mail", [{"handler": "ops:flaky", "args": [f"user{i}@example.com"]} for i in range(30)])
    wait_for(lambda: dead(governor, "mail") == 30, 20, "30 dead jobs")
    out = gov(governor, "jobs", "mail", "--state", "dead", "--limit", "100", "--json")
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    assert len(listed["jobs"]) == 30 and listed["next"] is None
    assert all(j["state"] == "dead" and "broken in v1" in j["errors"][-1]["error"] for j in listed["jobs"])
    page = json.loads(gov(governor, "jobs", "mail", "--limit", "10", "--json").stdout)
    assert len(page["jobs"]) == 10 and page["next"]  # paging: newest first, then the rest
    rest = json.loads(gov(governor, "jobs", "mail", "--limit", "100", "--cursor", page["next"], "--json").stdout)
    assert {j["id"] for j in page["jobs"] + rest["jobs"]} == {j["id"] for j in listed["jobs"]}
    found = json.loads(gov(governor, "jobs", "mail", "--search", "USER7@", "--json").stdout)["jobs"]
    assert [j["args"] for j in found] == [["user7@example.com"]]  # a search over the arguments
    assert json.loads(gov(governor, "jobs", "mail", "--handler", "ops:other", "--json").stdout)["jobs"] == []
    text = gov(governor, "job", listed["jobs"][0]["id"]).stdout
    assert "state: dead" in text and "broken in v1" in text and "Traceback" in text

    # the fix: a new version of the module, and workers that import it (a reload that changes the
    # queue's settings replaces them)
    shutil.rmtree(governor.dir / "__pycache__", ignore_errors=True)
    governor.add_app("ops_fixed", "ops")
    governor.write({"mail": {**queues["mail"], "done_ttl": "2h"}}, app=APP)
    governor.signal(signal.SIGHUP)
    wait_for(lambda: "settings changed" in governor.log(), 10, "the reload")
    out = gov(governor, "retry", "mail", "--all")
    assert out.returncode == 0 and "30 job(s) of mail back to waiting" in out.stdout, out.stderr
    wait_for(lambda: len(governor.lines("fixed")) == 30, 20, "the 30 retried jobs to run")
    counts = c.counts("mail")
    assert counts["dead"] == 0 and counts["done"] == 30

    def flaky() -> dict:  # per-handler figures, fleet-wide, as status shows them
        return governor.status()["handlers"].get("mail", {}).get("ops:flaky", {})

    wait_for(lambda: flaky().get("done") == 30, 10, "the handler's figures")
    f = flaky()
    assert (f["failed"], f["dead"], f["reasons"]) == (30, 30, {"exception": 30})
    assert f["samples"] == 30 and 0 <= f["p50"] <= f["p95"] <= f["p99"] < 1
    assert "ops:flaky" in gov(governor, "status").stdout
    again = c.job(listed["jobs"][0]["id"])
    assert again["state"] == "done" and again["attempts"] == 1 and len(again["errors"]) == 1  # history kept

    c.enqueue_many("mail", [{"handler": "ops:always_fails", "args": [f"x{i}"]} for i in range(30)])
    wait_for(lambda: dead(governor, "mail") == 30, 20, "30 more dead jobs")
    refused = gov(governor, "purge", "mail", "--state", "dead")  # stdin is not a terminal: asks for --yes
    assert refused.returncode == 2 and "--yes" in refused.stderr and dead(governor, "mail") == 30
    assert gov(governor, "purge", "mail", "--state", "dead", "--yes").returncode == 0
    assert dead(governor, "mail") == 0 and c.jobs("mail", "dead")[0] == []


def test_a_cancelled_delayed_job_never_runs(governor):
    governor.start({"work": {"concurrency": 1}})
    c = governor.client
    job = c.enqueue("work", "tasks:record", "never", delay="1s")
    out = gov(governor, "cancel", job)
    assert out.returncode == 0 and "cancelled" in out.stdout, out.stderr
    time.sleep(2)
    assert governor.lines("done") == []
    assert c.job(job)["state"] == "cancelled" and c.counts("work")["delayed"] == 0
    again = gov(governor, "cancel", job)
    assert again.returncode == 2 and "is cancelled: only a waiting or delayed job" in again.stderr


def test_bad_input_gets_a_clear_error_and_changes_nothing(governor):
    governor.start({"work": {"concurrency": 1}, "idle": {"concurrency": 0}})
    c = governor.client
    waiting = c.enqueue("idle", "tasks:record", "waits")
    before = c.counts("idle")
    cases = [
        (("job", "nope"), "no such job: nope"),
        (("cancel", "nope"), "no such job: nope"),
        (("retry", "idle", "nope"), "no such job in queue 'idle': nope"),
        (("retry", "idle", waiting), f"only dead jobs can be retried; not dead: {waiting} (waiting)"),
        (("jobs", "missing"), "no queue named 'missing'"),
        (("purge", "missing", "--state", "dead", "--yes"), "no queue named 'missing'"),
        (("purge", "idle", "--state", "active", "--yes"), "active jobs are running: they cannot be purged"),
        (("retry", "idle"), "name the jobs to retry"),
        (("jobs", "idle", "--cursor", "x.y"), "not a cursor"),
    ]
    for argv, words in cases:
        out = gov(governor, *argv)
        assert out.returncode == 2, (argv, out.stdout, out.stderr)
        assert words in out.stderr, (argv, out.stderr)
    assert c.counts("idle") == before and c.job(waiting)["state"] == "waiting"
    assert yaml.safe_load(governor.config_path.read_text())  # (the config is untouched too)


def test_a_retried_unique_job_takes_its_key_back(client):
    """While the retried job waits, a producer firing the same unique key gets it, not a twin."""
    from governor.protocol.queue import run

    first = client.enqueue("q", "m:f", unique="reindex")
    keys = client.keys("q")
    reply = run(client.redis, keys.reserve("host:1", "tok", 60_000))[0]
    assert reply[1].decode() == first
    assert run(client.redis, keys.fail(first, "tok", "host:1", {"error": "boom"}, "dead", 0, "exception", 0))[0] == 3
    assert client.enqueue("q", "m:f", unique="reindex") != first  # dead freed the key: a new job
    twin = client.jobs("q", "waiting")[0][0]["id"]
    client.cancel("q", twin)  # (its twin cancelled: the key is free again)
    assert client.retry("q", [first]) == 1
    assert client.enqueue("q", "m:f", unique="reindex") == first  # held by the retried job


# -- keyed jobs (partitioned queues): retry keeps a key's order; waiting means queued too ------

KEYED_APP = {"path": ["."], "handlers": ["keyed:*"]}


def ran(governor) -> list[tuple[str, int]]:
    path = governor.records / "order"
    return [(k, int(s)) for k, s in (line.split() for line in path.read_text().splitlines())] \
        if path.exists() else []


def start_keyed(governor, concurrency: int = 2) -> None:
    governor.add_app("keyed")
    governor.start({"ordered": {"concurrency": concurrency, "partitions": 4, "retry": {"max": 0}}},
                   app=KEYED_APP)


def die_in_order(governor, keys: list[str], n: int) -> dict[str, list[str]]:
    """n jobs per key, all failing in turn (each key's in its order); their ids per key."""
    (governor.records / "broken").write_text("")
    c = governor.client
    ids = c.enqueue_many("ordered", [{"handler": "keyed:step", "args": [k, s], "key": k}
                                     for k in keys for s in range(n)])
    wait_for(lambda: dead(governor, "ordered") == len(keys) * n, 20, "every job dead")
    (governor.records / "broken").unlink()
    return {k: ids[i * n:(i + 1) * n] for i, k in enumerate(keys)}


def test_retry_all_runs_a_keys_dead_jobs_in_enqueue_order(governor):
    """Issue 21 item 5: four jobs of a key died in order 0-3; `retry --all` ran them 3, 2, 1, 0."""
    start_keyed(governor)
    die_in_order(governor, ["alice", "bob"], 4)
    out = gov(governor, "retry", "ordered", "--all")
    assert out.returncode == 0 and "8 job(s) of ordered back to waiting" in out.stdout, out.stderr
    wait_for(lambda: len(ran(governor)) == 8, 20, "the 8 retried jobs to run")
    for key in ("alice", "bob"):
        assert [s for k, s in ran(governor) if k == key] == [0, 1, 2, 3]


def test_retry_by_id_in_any_order_and_batches_keeps_enqueue_order_before_newer_jobs(governor):
    """Retried by id in shuffled order, over several calls, with a newer job of the key already
    waiting: the retried jobs go before every job of the key that has not started, by enqueue
    order; they run 0, 1, 2, 3, then the newer job."""
    start_keyed(governor)
    ids = die_in_order(governor, ["alice"], 4)["alice"]
    c = governor.client
    c.pause("ordered")
    assert gov(governor, "retry", "ordered", ids[3]).returncode == 0  # alice's head, waiting
    c.enqueue("ordered", "keyed:step", "alice", 4, key="alice")  # queued behind it
    out = gov(governor, "retry", "ordered", ids[2], ids[0])
    assert out.returncode == 0 and "2 job(s)" in out.stdout, out.stderr
    assert c.job(ids[0])["state"] == "waiting" and c.job(ids[3])["state"] == "queued"  # 0 took the head
    assert gov(governor, "retry", "ordered", ids[1]).returncode == 0
    c.resume("ordered")
    wait_for(lambda: len(ran(governor)) == 5, 20, "the 5 jobs to run")
    assert ran(governor) == [("alice", s) for s in range(5)]


def test_retried_jobs_wait_behind_their_keys_running_job_in_enqueue_order(client):
    """A job of the key that has started keeps its place: the retried (older) ones run next, in
    their enqueue order whatever order and calls they were retried in, then the newer ones."""
    from governor.protocol.queue import partition_of, run

    client.redis.set(client.keys("ordered").partitions_key, 2)  # as the queue's first master does
    lane = client.keys("ordered").part(partition_of("k", 2))
    ids = [client.enqueue("ordered", "m:f", i, key="k") for i in range(6)]
    token = iter(f"t{i}" for i in range(100))

    def reserve() -> tuple[str, str]:
        t = next(token)
        return run(client.redis, lane.reserve("h:1", t, 60_000))[0][1].decode(), t

    for job in ids[:3]:  # 0, 1, 2 die in turn
        got, t = reserve()
        assert got == job
        assert run(client.redis, lane.fail(job, t, "h:1", {"error": "boom"}, "dead", 0, "exception", 0))[0] == 3
    running, t = reserve()
    assert running == ids[3]
    for job in (ids[1], ids[2], ids[0]):  # three calls, none in order
        assert client.retry("ordered", [job]) == 1
    assert [client.job(i)["state"] for i in ids] == ["queued"] * 3 + ["active", "queued", "queued"]
    assert run(client.redis, lane.ack(running, t, "h:1", 60_000, "null", 1))[0]
    for job in [*ids[:3], *ids[4:]]:
        got, t = reserve()
        assert got == job
        assert run(client.redis, lane.ack(job, t, "h:1", 60_000, "null", 1))[0]


def test_jobs_queued_behind_a_running_head_are_listed_purged_and_never_run(governor):
    """Issue 21 item 15: what status counts as waiting (jobs queued behind a running key head),
    `jobs --state waiting` lists and `purge --state waiting` deletes; they never run."""
    start_keyed(governor, concurrency=1)
    c = governor.client
    ids = c.enqueue_many("ordered", [{"handler": "keyed:hold", "args": ["k", s], "key": "k"} for s in range(4)])
    other = c.enqueue("ordered", "keyed:hold", "other", 0, key="other")  # a waiting head of its own key
    wait_for(lambda: (governor.records / "start").exists(), 20, "a head to start")
    assert c.counts("ordered")["waiting"] == 4
    listed = json.loads(gov(governor, "jobs", "ordered", "--state", "waiting", "--json").stdout)["jobs"]
    running = c.jobs("ordered", "active")[0][0]["id"]
    assert {j["id"] for j in listed} == set(ids + [other]) - {running}
    out = gov(governor, "purge", "ordered", "--state", "waiting", "--yes")
    assert out.returncode == 0 and "4 waiting job(s) of ordered deleted" in out.stdout, out.stderr
    assert c.counts("ordered")["waiting"] == 0
    assert c.jobs("ordered", "waiting")[0] == []
    (governor.records / "go").write_text("")
    wait_for(lambda: len(ran(governor)) == 1, 20, "the running head to finish")
    for key in ("k", "other"):  # each runs only after every job of its key enqueued before it
        c.enqueue("ordered", "keyed:hold", key, 9, key=key)
    wait_for(lambda: len(ran(governor)) == 3, 20, "the two new jobs to run")
    assert sorted(ran(governor)[1:]) == [("k", 9), ("other", 9)]  # nothing purged ran


def test_a_queued_job_is_cancelled_and_its_key_order_kept(client):
    from governor.protocol.queue import partition_of, run

    client.redis.set(client.keys("ordered").partitions_key, 2)
    lane = client.keys("ordered").part(partition_of("k", 2))
    a0, a1, a2 = (client.enqueue("ordered", "m:f", i, key="k") for i in range(3))
    assert {j["id"] for j in client.jobs("ordered", "waiting")[0]} == {a0, a1, a2}
    client.cancel("ordered", a1)
    assert {j["id"] for j in client.jobs("ordered", "waiting")[0]} == {a0, a2}
    assert run(client.redis, lane.reserve("h:1", "t0", 60_000))[0][1].decode() == a0
    assert run(client.redis, lane.ack(a0, "t0", "h:1", 60_000, "null", 1))[0]
    assert run(client.redis, lane.reserve("h:1", "t1", 60_000))[0][1].decode() == a2


# -- a retried unique job never makes a twin (W5) ---------------------------------------------

def _dead_unique(client, unique: str) -> str:
    from governor.protocol.queue import run

    job = client.enqueue("q", "m:f", unique=unique)
    keys = client.keys("q")
    assert run(client.redis, keys.reserve("host:1", "tok", 60_000))[0][1].decode() == job
    assert run(client.redis, keys.fail(job, "tok", "host:1", {"error": "boom"}, "dead", 0, "exception", 0))[0] == 3
    return job


def test_retrying_a_dead_unique_job_while_a_newer_one_holds_its_key_is_refused(client):
    first = _dead_unique(client, "reindex")
    newer = client.enqueue("q", "m:f", unique="reindex")  # the dead job freed the key
    assert newer != first
    with pytest.raises(ValueError) as err:
        client.retry("q", [first])
    assert first in str(err.value) and "reindex" in str(err.value) and newer in str(err.value)
    assert client.job(first)["state"] == "dead" and client.job(newer)["state"] == "waiting"
    retried = client.retry("q", all=True)  # --all skips it, and says so
    assert retried == 0 and [s[0] for s in retried.skipped] == [first]
    assert client.job(first)["state"] == "dead" and client.counts("q")["waiting"] == 1


def test_two_dead_jobs_of_one_unique_key_retried_together_make_one_live_job(client):
    a = _dead_unique(client, "report")
    b = _dead_unique(client, "report")
    retried = client.retry("q", all=True)
    assert retried == 1 and len(retried.skipped) == 1
    live = [j for j in (a, b) if client.job(j)["state"] == "waiting"]
    assert len(live) == 1 and client.enqueue("q", "m:f", unique="report") == live[0]
    still_dead = b if live[0] == a else a
    with pytest.raises(ValueError, match=f"job {still_dead}: its unique key 'report' is held by live job {live[0]}"):
        client.retry("q", [still_dead])


def test_the_cli_says_which_unique_job_it_did_not_retry_and_why(governor):
    governor.write({"q": {"concurrency": 1}})  # (no master: the jobs are settled by hand)
    first = _dead_unique(governor.client, "nightly")
    newer = governor.client.enqueue("q", "m:f", unique="nightly")
    out = gov(governor, "retry", "q", first)
    assert out.returncode == 2 and f"job {first}: its unique key 'nightly' is held by live job {newer}" \
        in out.stderr, out.stderr
    out = gov(governor, "retry", "q", "--all")
    assert out.returncode == 0 and "0 job(s) of q back to waiting" in out.stdout, out.stderr
    assert f"skipped job {first}: its unique key 'nightly' is held by live job {newer}" in out.stderr
    assert governor.client.job(first)["state"] == "dead"


def test_a_bounded_purge_of_waiting_takes_each_keys_queued_jobs_from_the_front(client):
    """One call deletes at most its limit, the queued first and each key's from the front: what
    is left of the key runs in its order."""
    from governor.protocol.queue import partition_of, run

    client.redis.set(client.keys("ordered").partitions_key, 2)
    lane = client.keys("ordered").part(partition_of("k", 2))
    ids = [client.enqueue("ordered", "m:f", i, key="k") for i in range(6)]
    assert run(client.redis, lane.reserve("h:1", "t0", 60_000))[0][1].decode() == ids[0]  # running
    assert run(client.redis, lane.purge("waiting", 2))[0] == [2, 3]
    assert [client.job(i) for i in ids[1:3]] == [None, None]
    assert client.counts("ordered")["waiting"] == 3
    assert run(client.redis, lane.ack(ids[0], "t0", "h:1", 60_000, "null", 1))[0]
    for n, job in enumerate(ids[3:]):
        reply = run(client.redis, lane.reserve("h:1", f"t{n + 1}", 60_000))[0]
        assert reply[1].decode() == job
        assert run(client.redis, lane.ack(job, f"t{n + 1}", "h:1", 60_000, "null", 1))[0]


def test_a_stale_entry_in_the_queued_index_never_purges_or_lists_a_job_that_moved_on(client):
    """A version that did not keep the queued index (a rolling upgrade) moves a queued job on to
    running without taking it out of the index: purge and jobs --state waiting must skip it
    (purging it would delete a running job's record and let its key's next job overtake it)."""
    from governor.protocol.queue import partition_of, run

    client.redis.set(client.keys("ordered").partitions_key, 2)
    lane = client.keys("ordered").part(partition_of("k", 2))
    first, second = (client.enqueue("ordered", "m:f", i, key="k") for i in range(2))
    assert run(client.redis, lane.reserve("h:1", "t0", 60_000))[0][1].decode() == first
    assert run(client.redis, lane.ack(first, "t0", "h:1", 60_000, "null", 1))[0]
    assert run(client.redis, lane.reserve("h:1", "t1", 60_000))[0][1].decode() == second  # running
    # what an old version's key_next would have left: the index still naming the running job
    client.redis.zadd(lane.queued, {second: 1})
    listed, _ = client.jobs("ordered", state="waiting")
    assert [j["id"] for j in listed] == []
    run(client.redis, lane.purge("waiting", 10))
    assert client.job(second)["state"] == "active"  # its record is whole
    assert client.redis.zscore(lane.queued, second) is None  # and the stale entry is gone
    assert run(client.redis, lane.ack(second, "t1", "h:1", 60_000, "null", 1))[0]
