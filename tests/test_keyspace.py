"""Issue 21, items 4, 6 and W3: no queue's keys coincide with another queue's, a partition's or
governor's own (the fleet registry, named limiters); fencing tokens grow across a partitioned
queue, not per partition."""

from __future__ import annotations

import pytest

from governor.config import ConfigError, load_config
from governor.names import queue_name_problem
from governor.protocol.fleet import FleetKeys, fleet
from governor.protocol.limits import limiter_limits, rules_for
from governor.protocol.queue import Client, QueueKeys, partition_of, run

from harness import wait_for

# every part a queue's or a partition's keys are made of (queue.py), handler-named ones included
_PARTS = ("partitions", "heads", "key:", "waiting", "delayed", "active", "dead", "done", "meta", "data",
          "leases", "wake", "stats", "unique", "paused", "seq", "fence", "tickets", "adaptive",
          "handler_counts", "runtimes:m:f", "adaptive_kills:m:f", "holders", "masters", "hint:",
          "touched:", "hint:host:1", "rate:sliding_window:1000", "alive")


def _keys_of(prefix: str, name: str, partitions: int) -> set[str]:
    lanes = [QueueKeys(prefix, name)] + [QueueKeys(prefix, name, n) for n in range(partitions)]
    return {lane.key(part) for lane in lanes for part in _PARTS}


def test_the_client_refuses_the_queue_names_check_refuses(client):
    for bad in ("q:1", "", "a b", "x" * 65, "q/1", "{q}", "fleet:alive", "é"):
        assert queue_name_problem(bad), bad
        with pytest.raises(ValueError, match="queue name"):
            client.enqueue(bad, "m:f")
        with pytest.raises(ValueError, match="queue name"):
            client.pause(bad)
    assert not client.redis.exists(f"{client.prefix}:queues")
    assert queue_name_problem("fleet") is None and queue_name_problem("a.b-c_9") is None


def test_check_refuses_the_same_names(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text('queues: {"q:1": 1}\n')
    with pytest.raises(ConfigError) as exc:
        load_config(str(path))
    assert exc.value.args and queue_name_problem("q:1") in str(exc.value)


def test_no_queue_key_is_another_queues_partition_or_an_internal_key():
    prefix = "gov"
    names = ["q", "q1", "1", "0", "fleet", "limiter", "limiter-0", "queues", "q.1", "-", "_"]
    assert all(queue_name_problem(n) is None for n in names)
    internal = {FleetKeys(prefix).records, FleetKeys(prefix).alive, f"{prefix}:queues"}
    for lim in ("0", "1", "fleet", "q"):
        internal |= {lim.key for lim in limiter_limits(prefix, lim, [_Limit()])}
    seen: dict[str, str] = {}
    for name in names:
        for key in _keys_of(prefix, name, 12):
            assert key not in internal, key
            assert seen.setdefault(key, name) == name, f"{key}: {name} and {seen[key]}"


class _Limit:
    limit, per, algorithm, burst = 3, 1.0, "sliding_window", 3


def test_a_partitioned_queue_named_fleet_runs_and_the_registry_stays_whole(governor):
    governor.start({"fleet": {"concurrency": 2, "partitions": 2}})
    wait_for(lambda: governor.client.partitions("fleet") == 2, 10, "the partition count registered")
    for i in range(4):
        governor.client.enqueue("fleet", "tasks:record", f"k{i}", key=f"k{i}")
    wait_for(lambda: len(governor.lines("done")) == 4, 15, "every job of queue fleet to run")
    masters = fleet(governor.client.redis, governor.prefix)
    assert len(masters) == 1 and "error" not in masters[0]
    assert "WRONGTYPE" not in governor.log()


def _reserve(client: Client, lane: QueueKeys, worker: str, **kw) -> int:
    reply = run(client.redis, lane.reserve(worker, f"tok-{worker}", 60_000, **kw))[0]
    assert reply[0] == 1, reply
    import json
    return json.loads(reply[3])["fence"]


def _keys_per_partition(n: int, per: int) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {p: [] for p in range(n)}
    i = 0
    while any(len(v) < per for v in out.values()):
        k = f"key{i}"
        i += 1
        if len(out[partition_of(k, n)]) < per:
            out[partition_of(k, n)].append(k)
    return out


def _partitioned(client: Client, queue: str, n: int, per: int) -> None:
    client.redis.set(client.keys(queue).partitions_key, n)  # as the queue's first master does
    for keys in _keys_per_partition(n, per).values():
        for k in keys:
            client.enqueue(queue, "m:f", key=k)


def test_fencing_tokens_grow_across_the_partitions_of_a_queue(client):
    _partitioned(client, "pq", 4, 3)
    order = [0, 1, 2, 3, 3, 2, 1, 0, 1, 3, 0, 2]  # reservation order over the partitions
    tokens = [_reserve(client, client.keys("pq").part(p), f"w{i}", partitions=4) for i, p in enumerate(order)]
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens), tokens


def test_on_a_cluster_tokens_grow_within_a_partition_and_follow_the_clock_across(client):
    """The Cluster form (no key shared by the partitions' slots), run here on one Redis."""
    _partitioned(client, "cq", 4, 3)
    lanes = client.keys("cq")
    tokens = []
    for i, p in enumerate([2, 2, 0, 1, 3, 3, 0]):
        tokens.append((p, _reserve(client, lanes.part(p), f"w{i}", partitions=4, cluster=True)))
        if i in (1, 3):  # a step of the clock between these (a unit is 1000 * 4 / 2048 ms)
            t0 = client.redis.time()
            wait_for(lambda t0=t0: client.redis.time() > (t0[0], t0[1] + 3000), 2, "3 ms of Redis time")
    assert all(t % 4 == p for p, t in tokens), tokens  # each partition's own residue: never equal
    for p in range(4):
        mine = [t for q, t in tokens if q == p]
        assert mine == sorted(mine) and len(set(mine)) == len(mine)
    assert tokens[2][1] > tokens[1][1] and tokens[4][1] > tokens[3][1]  # later by more than a unit
    assert all(t < 10 ** 14 for _, t in tokens)  # exact in a record (cjson keeps 14 digits)


def test_rules_key_names_live_outside_every_queue_namespace():
    class Q:
        name = "limiter"
        rate_limits = ()
        limiters = ("0",)
        global_concurrency = 0
    keys = rules_for("gov", Q, {"0": [_Limit()]}).keys()
    assert not (set(keys) & _keys_of("gov", "limiter", 4))
