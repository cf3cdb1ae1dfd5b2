"""The operator's commands against a real master: enqueue, status, the embedded Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import yaml

from harness import cli, wait_for


def test_enqueue_prints_the_id_and_the_job_runs(governor):
    governor.start({"work": {"concurrency": 1}})
    out = cli("enqueue", "-c", str(governor.config_path), "work", "tasks:record",
              "--args", '["from-cli"]', "--priority", "5", "--job-id", "cli-1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "cli-1"
    wait_for(lambda: governor.lines("done") == ["from-cli"], 5, "the job")
    assert governor.client.job("cli-1")["priority"] == 5


def test_enqueue_refuses_bad_arguments(governor):
    governor.write({"work": {"concurrency": 1}})
    cfg = str(governor.config_path)
    bad = cli("enqueue", "-c", cfg, "work", "tasks:record", "--args", "[oops")
    assert bad.returncode == 2 and "--args is not valid JSON" in bad.stderr
    bad = cli("enqueue", "-c", cfg, "work", "tasks:record", "--delay", "soon")
    assert bad.returncode == 2 and "delay" in bad.stderr and "'soon'" in bad.stderr
    bad = cli("enqueue", "-c", cfg, "work", "tasks:record", "--priority", "500")
    assert bad.returncode == 2 and "priority" in bad.stderr
    assert governor.client.counts("work")["waiting"] == 0


def test_status_json_lists_every_worker_and_falls_back_to_redis(governor):
    governor.start({"work": {"concurrency": 2}, "other": {"concurrency": 1}})
    governor.client.enqueue("work", "tasks:sleep_then_record", "s", 2)
    governor.client.enqueue("other", "tasks:record", "x", delay=60)
    wait_for(lambda: governor.lines("start"), 5, "the job to start")
    out = cli("status", "-c", str(governor.config_path), "--json")
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    assert st["master"]["pid"] == governor.proc.pid
    workers = {p["queue"]: p["workers"] for p in st["pools"]}
    assert len(workers["work"]) == 2 and len(workers["other"]) == 1
    real = {c.pid for c in governor.children()}
    assert {w["pid"] for ws in workers.values() for w in ws} == real
    busy = [w for w in workers["work"] if w["state"] == "busy"]
    assert len(busy) == 1 and busy[0]["job"]["handler"] == "tasks:sleep_then_record"
    for w in workers["work"]:
        assert {"pid", "state", "uptime", "jobs_done", "rss", "job"} <= set(w)
        assert w["rss"] > 1_000_000
    assert st["queues"]["work"]["active"] == 1 and st["queues"]["other"]["delayed"] == 1

    text = cli("status", "-c", str(governor.config_path))
    assert "busy" in text.stdout and "tasks:sleep_then_record" in text.stdout

    governor.signal(signal.SIGINT)
    governor.wait_exit()
    st = json.loads(cli("status", "-c", str(governor.config_path), "--json").stdout)
    assert st["master"] is None
    assert st["queues"]["work"]["waiting"] == 1  # the killed job, requeued
    assert st["queues"]["other"]["delayed"] == 1
    assert "no master running" in cli("status", "-c", str(governor.config_path)).stdout


def test_embedded_redis_serves_the_master_and_the_cli(tmp_path):
    (tmp_path / "tasks.py").write_text(
        f"def touch(name):\n    open({str(tmp_path)!r} + '/' + name, 'w').close()\n")
    cfg = tmp_path / "g.yaml"
    cfg.write_text(yaml.safe_dump({
        "redis": {"url": "embedded"}, "app": {"path": ["."], "handlers": ["tasks:*"]},
        "state_dir": str(tmp_path / "state"), "queues": {"q": {"concurrency": 1}}}))
    master = subprocess.Popen([sys.executable, "-m", "governor", "run", "-c", str(cfg)],
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: os.path.exists(tmp_path / "state" / "control.sock"), 15, "the master")
        out = cli("enqueue", "-c", str(cfg), "q", "tasks:touch", "--args", '["ran"]')
        assert out.returncode == 0, out.stderr
        wait_for(lambda: (tmp_path / "ran").exists(), 10, "the job on the embedded Redis")
        assert oct(os.stat(tmp_path / "state" / "control.sock").st_mode & 0o777) == "0o600"
    finally:
        master.send_signal(signal.SIGTERM)
        assert master.wait(20) == 0
    # the master took its Redis down with it
    out = cli("enqueue", "-c", str(cfg), "q", "tasks:touch", "--args", '["again"]')
    assert out.returncode == 1 and "embedded Redis is not running" in out.stderr


def test_a_taken_metrics_port_is_a_clear_error_and_leaves_nothing_behind(tmp_path):
    import socket as _socket

    from conftest import free_port

    port = free_port()
    blocker = _socket.socket()
    blocker.bind(("127.0.0.1", port))
    blocker.listen(1)
    cfg = tmp_path / "g.yaml"
    cfg.write_text(yaml.safe_dump({
        "redis": {"url": "embedded"}, "state_dir": str(tmp_path / "state"),
        "metrics": {"listen": f"127.0.0.1:{port}"}, "queues": {"q": 1}}))
    try:
        out = subprocess.run([sys.executable, "-m", "governor", "run", "-c", str(cfg)],
                             capture_output=True, text=True, timeout=30)
    finally:
        blocker.close()
    assert out.returncode == 1
    assert "Address already in use" in out.stderr and f"127.0.0.1:{port}" in out.stderr
    # the embedded redis-server it had started is gone again
    import psutil
    assert not [p for p in psutil.process_iter(["cmdline"])
                if str(tmp_path / "state") in " ".join(p.info["cmdline"] or [])]


def test_embedded_redis_dies_with_a_killed_master_and_the_next_one_starts_clean(tmp_path):
    import psutil

    cfg = tmp_path / "g.yaml"
    cfg.write_text(yaml.safe_dump({"redis": {"url": "embedded"}, "state_dir": str(tmp_path / "state"),
                                   "queues": {"q": 1}}))

    def servers():
        return [p for p in psutil.process_iter(["cmdline", "status"])
                if "redis-server" in " ".join(p.info["cmdline"] or [])
                and str(tmp_path / "state") in " ".join(p.info["cmdline"] or [])
                and p.info["status"] != psutil.STATUS_ZOMBIE]

    first = subprocess.Popen([sys.executable, "-m", "governor", "run", "-c", str(cfg)], stderr=subprocess.DEVNULL)
    wait_for(lambda: os.path.exists(tmp_path / "state" / "control.sock"), 15, "the first master")
    first.kill()
    first.wait()
    wait_for(lambda: servers() == [], 5, "the embedded redis-server to follow its master")
    second = subprocess.Popen([sys.executable, "-m", "governor", "run", "-c", str(cfg)], stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(servers()) == 1, 15, "one redis-server for the second master")
        out = cli("enqueue", "-c", str(cfg), "q", "x:y")
        assert out.returncode == 0, out.stderr
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(20)


def _dead_letter_raw(client, queue: str, job_id: str, record: dict) -> None:
    """A dead-lettered job as anyone with write access to Redis (or a hostile job) can leave it."""
    k = client.keys(queue)
    client.redis.sadd(f"{client.prefix}:queues", queue)
    client.redis.hset(k.meta, job_id, json.dumps(record))
    client.redis.zadd(k.dead, {job_id: 1})


def test_status_escapes_control_characters_from_redis_and_jobs(governor):
    governor.write({"w": {"concurrency": 1}})
    nasty = "\x1b[2J\x1b]0;pwned\x07\r"
    _dead_letter_raw(governor.client, "w", f"job{nasty}1", {
        "id": f"job{nasty}1", "state": "dead", "handler": "tasks:h\u202eevil", "reason": f"r{nasty}",
        "attempts": 1, "errors": [{"error": f"ValueError: boom{nasty}overwritten\nsecond line"}]})
    _dead_letter_raw(governor.client, f"q{nasty}", "plain", {
        "id": "plain", "state": "dead", "handler": "tasks:x", "reason": "failed", "attempts": 1,
        "errors": [{"error": "fine"}]})
    out = subprocess.run([sys.executable, "-m", "governor", "status", "-c", str(governor.config_path)],
                         capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    text = out.stdout.decode()
    for raw in ("\x1b", "\r", "\x07", "\u202e"):
        assert raw not in text
    assert r"job\x1b[2J\x1b]0;pwned\x07\r1" in text  # the job id, visibly escaped
    assert r"tasks:h\u202eevil" in text
    assert r"ValueError: boom\x1b[2J\x1b]0;pwned\x07\roverwritten" in text
    assert r"q\x1b[2J" in text  # a queue name read from Redis
    st = json.loads(cli("status", "-c", str(governor.config_path), "--json").stdout)
    assert st["queues"]["w"]["recent_dead"][0]["id"] == f"job{nasty}1"  # JSON keeps the real value


def test_enqueue_to_an_undefined_queue_is_refused_unless_forced(governor):
    governor.write({"b": {"concurrency": 1}, "a": {"concurrency": 1}})
    cfg = str(governor.config_path)
    out = cli("enqueue", "-c", cfg, "typo", "tasks:record", "--args", '["x"]')
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip() == (f"governor: queue 'typo' is not defined in {cfg} (queues: a, b); no worker "
                                  "would take the job. Use --force to enqueue anyway.")
    assert governor.client.counts("typo")["waiting"] == 0
    assert "typo" not in governor.client.queues()

    out = cli("enqueue", "-c", cfg, "typo", "tasks:record", "--args", '["x"]', "--force", "--job-id", "f-1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "f-1" and "warning" in out.stderr and "'typo'" in out.stderr
    assert governor.client.counts("typo")["waiting"] == 1
