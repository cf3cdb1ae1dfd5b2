"""Operating on jobs from the CLI: list, read, retry, purge, cancel; bad input changes nothing."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import yaml

from conftest import wait_for

BROKEN = '''
import os
RECORDS = {records!r}

def flaky(key):
    raise ValueError("broken in v1: cannot reach the mail server for " + key)

def always_fails(key):
    raise RuntimeError("still broken")
'''

FIXED = '''
import os
RECORDS = {records!r}

def flaky(key):
    """v2: fixed, and it says so in the records, so the retried runs are counted."""
    with open(os.path.join(RECORDS, "fixed"), "a") as fh:
        fh.write(key + "\\n")

def always_fails(key):
    raise RuntimeError("still broken")
'''

APP = {"path": ["."], "handlers": ["tasks:*", "ops:*"]}


def gov(governor, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "governor", *argv, "-c", str(governor.config_path)],
                          capture_output=True, text=True, timeout=60, input=stdin)


def dead(governor, queue: str) -> int:
    return governor.client.counts(queue)["dead"]


def test_dead_jobs_are_listed_retried_after_a_fix_and_purged(governor):
    (governor.dir / "ops.py").write_text(BROKEN.format(records=str(governor.records)))
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
    (governor.dir / "ops.py").write_text(FIXED.format(records=str(governor.records)))
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
