"""The partition harness itself (tests/netns.py), with today's master: a master in a network
namespace of its own works through the veth; cut, it loses Redis without dying and without
taking work; healed, it carries on; nothing of the namespace outlives the test."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import redis

from harness import APPS, wait_for

# The fixtures (partition, partition_redis, ns_governor). Import names from netns inside the
# tests: imported here, before pytest loads it as a plugin, pytest warns it cannot rewrite it.
pytest_plugins = ("netns",)


def _links() -> str:
    return subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_a_master_in_the_namespace_runs_a_job_enqueued_from_the_root_side(ns_governor, partition,
                                                                         partition_redis):
    g = ns_governor
    g.start({"w": {"concurrency": 1}}, lease="2s")
    assert os.readlink(f"/proc/{g.proc.pid}/ns/net") != os.readlink("/proc/self/ns/net")
    # Redis sees the master coming from the namespace's address, not from loopback
    clients = redis.Redis.from_url(partition_redis.url).client_list()
    masters = [c for c in clients if c["name"] == "governor-master"]
    assert masters and all(c["addr"].startswith(partition.address_ns + ":") for c in masters)

    job = g.client.enqueue("w", "tasks:record", "a")
    wait_for(lambda: g.client.job(job)["state"] == "done", 10, "the job to run")
    assert g.lines("done") == ["a"]


def test_cut_stalls_the_master_without_killing_it_and_heal_resumes_it(ns_governor, partition):
    g = ns_governor
    g.start({"w": {"concurrency": 1}}, lease="2s")  # an idle queue is ticked every 1 s
    partition.cut()
    wait_for(lambda: "Redis unavailable" in g.log(), 6, "the master to notice the cut",
             interval=0.1)
    job = g.client.enqueue("w", "tasks:record", "a")  # from the root side, through 127.0.0.1
    time.sleep(1.5)
    g.assert_running()
    assert g.client.job(job)["state"] == "waiting"  # no worker could take it
    assert g.lines("done") == []

    partition.heal()
    wait_for(lambda: g.client.job(job)["state"] == "done", 10, "the job to run after heal",
             interval=0.1)
    wait_for(lambda: "Redis is reachable again" in g.log(), 5, "the master to say so",
             interval=0.1)
    g.assert_running()
    assert g.lines("done") == ["a"]


def test_a_cut_stalls_a_connection_silently_and_heal_resumes_the_same_one(partition,
                                                                           partition_redis):
    pinger = partition.run([sys.executable, str(APPS / "pinger.py"), partition.address_root,
                            str(partition_redis.port)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(line: str) -> str:
        pinger.stdin.write(line + "\n")
        pinger.stdin.flush()
        return pinger.stdout.readline().strip()

    assert ask("ping 2") == "reply +PONG"
    partition.cut()
    assert ask("ping 1") == "timeout"  # not reset, not unreachable: dropped
    partition.heal()
    assert ask("wait 8") == "reply +PONG"  # the stalled PING, retransmitted on the same connection
    pinger.stdin.close()
    pinger.wait(5)


def test_close_and_sweep_leave_nothing_behind():
    from netns import PREFIX, new_partition, sweep_leftovers

    with new_partition() as p:
        sleeper = p.run(["sleep", "60"])
        assert p.name in _namespaces() and p.link_root in _links()
        # a dead session's leftovers: a namespace and a link named after a pid now gone
        gone = subprocess.Popen(["true"])
        gone.wait()
        stale = f"{PREFIX}{gone.pid:x}-0"
        subprocess.run(["ip", "netns", "add", stale], check=True)
        subprocess.run(["ip", "link", "add", stale + "r", "type", "veth", "peer", "name", stale + "n"],
                       check=True)
        ours = f"{PREFIX}{os.getpid():x}-fff"  # our pid, not our partition: an earlier process's
        subprocess.run(["ip", "netns", "add", ours], check=True)
        removed = sweep_leftovers()
        assert f"netns {stale}" in removed and f"link {stale}r" in removed
        assert f"netns {ours}" in removed
        assert stale not in _namespaces() and stale + "r" not in _links()
        assert p.name in _namespaces() and p.link_root in _links()  # a live session's: kept
    assert sleeper.poll() is not None
    assert p.name not in _namespaces()
    assert p.link_root not in _links()
    routes = subprocess.run(["ip", "route", "show", "type", "blackhole"], capture_output=True,
                            text=True).stdout
    assert str(p.subnet) not in routes
