"""`governor status` over what any Redis client can write: the fleet registry and the queue
registry are input, not truth. A bad entry is shown as such; the rest of the fleet as usual."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest
import yaml

from governor import __version__

BAD_RECORDS = [b'{"master": "str", "pools": [7]}', b'{"master": {"host": "h", "pid": 1, "uptime": 1},'
               b' "pools": [{"queue": "q", "desired": 1, "actual": 1, "workers": [{"job": 5}]}]}', b"[1, 2]",
               b"\xff\xfe not json"]


def status(cfg_path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "governor", "status", "-c", str(cfg_path), *extra],
                          capture_output=True, text=True, timeout=30)


@pytest.fixture
def observer(tmp_path, client, redis_server):
    """A config on the client's Redis and prefix whose state dir no master uses."""
    cfg = tmp_path / "observer.yaml"
    cfg.write_text(yaml.safe_dump({"redis": {"url": redis_server.url, "prefix": client.prefix},
                                   "state_dir": str(tmp_path / "observer-state"),
                                   "queues": {"work": {"concurrency": 1}}}))
    return cfg


def plant_record(client, name: str, record: bytes) -> None:
    """What any Redis client can do: a record under the registry's keys, alive for a minute."""
    from governor.protocol.fleet import FleetKeys

    keys = FleetKeys(client.prefix)
    client.redis.hset(keys.records, name, record)
    redis_now_ms = int(client.redis.time()[0]) * 1000
    client.redis.zadd(keys.alive, {name: redis_now_ms + 60_000})


def test_a_fleet_record_of_the_wrong_shape_is_shown_unreadable_and_the_rest_as_usual(governor, tmp_path):
    governor.start({"work": {"concurrency": 1}})
    for i, bad in enumerate(BAD_RECORDS):
        plant_record(governor.client, f"evil{i}", bad)
    out = status(governor.config_path)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert f":{governor.proc.pid}" in out.stdout  # the real master, as usual
    for i in range(len(BAD_RECORDS)):
        line = next(line for line in out.stdout.splitlines() if line.startswith(f"evil{i}"))
        assert "UNREADABLE" in line, line
    assert "fleet: 5 master(s), 1 worker(s)" in out.stdout, out.stdout
    out = status(governor.config_path, "--json")
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    by_id = {m["id"]: m for m in st["fleet"]}
    assert all(by_id[f"evil{i}"]["error"].startswith("unreadable record") for i in range(len(BAD_RECORDS)))
    mine = [m for m in st["fleet"] if "error" not in m]
    assert [m["master"]["pid"] for m in mine] == [governor.proc.pid]


def test_status_shows_this_masters_version_in_the_fleet_table(governor):
    governor.start({"work": {"concurrency": 1}})
    out = status(governor.config_path)
    row = next(line for line in out.stdout.splitlines() if f":{governor.proc.pid} " in line)
    assert __version__ in row.split(), row
    st = json.loads(status(governor.config_path, "--json").stdout)
    assert [m["master"]["version"] for m in st["fleet"]] == [__version__]


def test_queue_names_that_do_not_decode_are_shown_as_such_and_skipped(client, observer):
    client.enqueue("work", "tasks:record", "x")
    client.redis.sadd(f"{client.prefix}:queues", b"\xff\xfebad", b"x" * 5000)
    out = status(observer)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert re.search(r"^work\s+1\s", out.stdout, re.M), out.stdout
    assert "\\xff\\xfebad" in out.stdout and "unreadable queue name" in out.stdout
    assert "x" * 300 not in out.stdout  # (a long name is not printed whole)
    st = json.loads(status(observer, "--json").stdout)
    assert st["queues"]["work"]["waiting"] == 1 and len(st["unreadable_queues"]) == 2
    # the job commands work for the other queues
    for argv in (["jobs", "work", "--state", "waiting"], ["job", client.job("x") and "x" or "x", "--queue", "work"]):
        run = subprocess.run([sys.executable, "-m", "governor", *argv, "-c", str(observer)],
                             capture_output=True, text=True, timeout=30)
        assert "Traceback" not in run.stderr, run.stderr
    run = subprocess.run([sys.executable, "-m", "governor", "jobs", "work", "--state", "waiting", "-c",
                          str(observer)], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0 and "tasks:record" in run.stdout, run.stderr
    jid = client.enqueue("work", "tasks:record", "y")
    run = subprocess.run([sys.executable, "-m", "governor", "cancel", jid, "-c", str(observer)],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0 and "cancelled" in run.stdout, run.stderr
    run = subprocess.run([sys.executable, "-m", "governor", "purge", "work", "--state", "waiting", "--yes",
                          "-c", str(observer)], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0 and "1 waiting job(s)" in run.stdout, (run.stdout, run.stderr)


@pytest.mark.parametrize("count", [b"200000", b"0", b"-3", b"garbage", b"9" * 400])
def test_a_partition_count_out_of_range_is_shown_and_skipped_without_unbounded_work(client, observer, count):
    client.enqueue("work", "tasks:record", "x")
    client.redis.sadd(f"{client.prefix}:queues", "wide")
    client.redis.set(client.keys("wide").partitions_key, count)
    started = time.monotonic()
    out = status(observer)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert re.search(r"^work\s+1\s", out.stdout, re.M), out.stdout
    assert re.search(r"wide.*partition count .* not from 1 to 1024", out.stdout), out.stdout
    assert time.monotonic() - started < 10
    st = json.loads(status(observer, "--json").stdout)
    assert "partition count" in st["queues"]["wide"]["error"]
    with pytest.raises(ValueError, match="partition count"):
        client.jobs("wide", "waiting")
    assert client.jobs("work", "waiting")[0]  # the other queues as usual


def test_the_client_reads_the_registry_in_bounded_calls(client):
    from governor.protocol.queue import MAX_QUEUES_READ

    client.redis.sadd(f"{client.prefix}:queues", *[f"q{i}" for i in range(MAX_QUEUES_READ + 50)])
    names, unreadable, more = client.registry()
    assert len(names) + len(unreadable) <= MAX_QUEUES_READ and more >= 50
    client.known_queue(f"q{MAX_QUEUES_READ + 49}")  # any registered name is known, read or not
    with pytest.raises(ValueError, match="no queue named 'nope'"):
        client.known_queue("nope")
