"""The fleet registry: masters on one Redis seen from a machine that runs none."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import yaml

from fleet import LEASE
from harness import wait_for


def status(fleet, *extra: str) -> subprocess.CompletedProcess:
    """``governor status`` from a third place: a config with the fleet's Redis and prefix and a
    state dir no master uses (so nothing answers on a control socket)."""
    cfg = fleet.tmp / "observer.yaml"
    if not cfg.exists():
        cfg.write_text(yaml.safe_dump({"redis": {"url": fleet.redis_url, "prefix": fleet.prefix},
                                       "state_dir": str(fleet.tmp / "observer-state"),
                                       "queues": {"work": {"concurrency": 1}}}))
    return subprocess.run([sys.executable, "-m", "governor", "status", "-c", str(cfg), *extra],
                          capture_output=True, text=True, timeout=30)


def fleet_json(fleet) -> dict:
    out = status(fleet, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_status_from_anywhere_lists_every_master_and_a_dead_one_drops_out(fleet):
    a = fleet.master("a", {"work": {"concurrency": 2}})
    b = fleet.master("b", {"work": {"concurrency": 3}, "other": {"concurrency": 1}})
    a.start()
    b.start()
    a.client.enqueue("work", "tasks:sleep_then_record", "busy", 3)

    def both() -> dict | None:  # (each record is at most one heartbeat old: LEASE/4 here)
        st = fleet_json(fleet)
        pids = {m["master"]["pid"] for m in st["fleet"]}
        busy = any(w["job"] for m in st["fleet"] for p in m["pools"] for w in p["workers"])
        workers = sum(len(p["workers"]) for m in st["fleet"] for p in m["pools"])
        return st if pids == {a.proc.pid, b.proc.pid} and busy and workers == 6 else None

    st = wait_for(both, 10, "both masters, with all their workers and a busy one, in the fleet")
    assert st["master"] is None  # nothing runs on the observer's own state dir
    by_pid = {m["master"]["pid"]: m for m in st["fleet"]}
    assert {p["queue"]: len(p["workers"]) for p in by_pid[a.proc.pid]["pools"]} == {"work": 2}
    assert {p["queue"]: len(p["workers"]) for p in by_pid[b.proc.pid]["pools"]} == {"work": 3, "other": 1}
    job = next(w["job"] for m in st["fleet"] for p in m["pools"] for w in p["workers"] if w["job"])  # (either may run it)
    assert job["handler"] == "tasks:sleep_then_record"
    assert all(m["master"]["version"] and m["master"]["config"] for m in st["fleet"])
    text = status(fleet).stdout
    assert f":{a.proc.pid}" in text and f":{b.proc.pid}" in text and "fleet: 2 master(s), 6 worker(s)" in text
    one = status(fleet, "--host", f"{by_pid[b.proc.pid]['master']['host']}:{b.proc.pid}")
    assert "other" in one.stdout and "fleet: 1 master(s), 4 worker(s)" in one.stdout, one.stdout
    b.proc.kill()  # SIGKILL: no goodbye, only the heartbeats stop
    killed = time.monotonic()
    wait_for(lambda: {m["master"]["pid"] for m in fleet_json(fleet)["fleet"]} == {a.proc.pid},
             LEASE + 5, "the killed master to drop out")
    print(f"\nkilled master dropped out after {time.monotonic() - killed:.1f}s (lease {LEASE}s)")
    b.wait_exit()
    a.stop()  # a clean stop leaves at once, not a lease later
    wait_for(lambda: fleet_json(fleet)["fleet"] == [], 2, "the stopped master to leave")


def test_status_of_an_unknown_host_says_so(fleet):
    a = fleet.master("a", {"work": {"concurrency": 1}})
    a.start()
    out = status(fleet, "--host", "no-such-host")
    assert out.returncode == 0 and "no live master on host no-such-host" in out.stdout


def test_an_idle_master_renews_its_place_without_rewriting_its_record_and_a_lost_one_is_rewritten(client):
    from governor.protocol.fleet import fleet as read_fleet
    from governor.supervise.fleetrecord import FleetRegistry

    record = {"master": {"host": "h", "pid": 1, "uptime": 0.0}, "pools": [{"queue": "q", "workers": []}]}
    reg = FleetRegistry(client.redis, client.prefix, "h:1", lease=2.0, record=lambda: record)
    reg.run(0.0)
    assert [m["id"] for m in read_fleet(client.redis, client.prefix)] == ["h:1"]
    record["master"]["uptime"] = 5.0  # only a clock moved: the next beat renews, writes nothing
    reg.run(reg.next_beat)
    assert read_fleet(client.redis, client.prefix)[0]["master"]["uptime"] == 0.0
    record["pools"][0]["workers"] = [{"pid": 7, "state": "busy", "job": {"id": "j"}}]  # what it shows changed
    reg.run(reg.next_beat)
    assert read_fleet(client.redis, client.prefix)[0]["pools"][0]["workers"][0]["pid"] == 7
    client.redis.delete(reg.keys.records)  # (Redis lost it): the next beat writes it whole again
    reg.run(reg.next_beat)
    assert [m["id"] for m in read_fleet(client.redis, client.prefix)] == ["h:1"]
