"""Bad input is dead-lettered with a reason that says what was wrong, and the worker lives on."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness import wait_for


def _raw_job(client, queue, job_id, payload: bytes, meta: str | None):
    """What someone with write access to Redis (or a buggy producer) might leave behind."""
    k = client.keys(queue)
    client.redis.hset(k.data, job_id, payload)
    if meta is not None:
        client.redis.hset(k.meta, job_id, meta)
    client.redis.zadd(k.waiting, {job_id: 1})
    client.redis.rpush(k.wake, "1")


@pytest.mark.parametrize("payload, meta, words", [
    (b"\x80not json at all", None, "payload is not JSON"),
    (b'{"args": [1]}', '{"id": "x"}', "'handler' must be a string"),
    (b'{"handler": "tasks:record", "args": "oops"}', "{broken meta", "'args' must be a list"),
])
def test_malformed_jobs_go_to_dead_letter_with_the_reason(governor, payload, meta, words):
    governor.start({"w": {"concurrency": 1}})
    pid = governor.workers("w")[0]["pid"]
    _raw_job(governor.client, "w", "bad-1", payload, meta)
    record = wait_for(lambda: (r := governor.client.job("bad-1", "w")) and r.get("state") == "dead" and r, 5,
                      "the malformed job to be dead-lettered")
    assert record["reason"] == "malformed" and words in record["errors"][0]["error"]
    governor.client.enqueue("w", "tasks:record", "after")
    wait_for(lambda: governor.lines("done") == ["after"], 5, "the worker to go on")
    assert governor.workers("w")[0]["pid"] == pid  # the same worker: it survived


def test_unknown_handler_and_import_failure_are_dead_lettered(governor):
    (governor.dir / "broken_tasks.py").write_text("import does_not_exist\n")
    governor.write({"w": {"concurrency": 1}})
    cfg = governor.config({"w": {"concurrency": 1}})
    cfg["app"]["handlers"] = ["tasks:*", "broken_tasks:*"]
    import yaml
    governor.config_path.write_text(yaml.safe_dump(cfg))
    governor.start()
    missing = governor.client.enqueue("w", "tasks:no_such_function")
    broken = governor.client.enqueue("w", "broken_tasks:run")
    for job, reason, words in ((missing, "unknown_handler", "has no function 'no_such_function'"),
                               (broken, "import_error", "No module named 'does_not_exist'")):
        record = wait_for(lambda j=job: (r := governor.client.job(j)) and r["state"] == "dead" and r, 5, reason)
        assert record["reason"] == reason and words in record["errors"][0]["error"]
        assert record["attempts"] == 1  # not retried: retrying cannot help
    governor.client.enqueue("w", "tasks:record", "alive")
    wait_for(lambda: governor.lines("done") == ["alive"], 5, "the worker to go on")


def test_enqueue_refuses_an_oversized_payload_by_the_configured_limit(governor):
    governor.write({"w": {"concurrency": 1}}, limits={"max_payload": "1KiB"})
    out = subprocess.run([sys.executable, "-m", "governor", "enqueue", "-c", str(governor.config_path), "w",
                          "tasks:record", "--args", json.dumps(["x" * 2000])], capture_output=True, text=True)
    assert out.returncode == 2 and "over the limit of 1024" in out.stderr
    assert governor.client.counts("w")["waiting"] == 0


def test_a_bad_config_at_start_exits_2_naming_the_path(governor):
    governor.write({"w": {"concurrency": "many"}})
    out = subprocess.run([sys.executable, "-m", "governor", "run", "-c", str(governor.config_path)],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 2
    assert "queues.w.concurrency" in out.stderr and "'many'" in out.stderr
