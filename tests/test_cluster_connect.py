"""Issue 10, the connection layer: ``redis+cluster://`` URLs reach a real Redis Cluster
(3 primaries, 3 replicas, tests/cluster.py), governor's client works through it, and a
primary's failover is a pause of a few seconds, not an error, for a client that keeps going.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import threading
import time
import uuid

import pytest
import redis

from governor import redisurl
from governor.config import ConfigError, TlsConfig, mask_url, parse_config
from governor.protocol.connection import (
    ClusterUnavailable,
    connect,
    disconnect,
    is_cluster,
    is_transient,
    socket_fds,
)
from governor.protocol.queue import Client, run

from harness import free_port

pytest_plugins = ("cluster",)


def _keys_on_every_primary(cluster, count: int = 30) -> list[str]:
    keys = [f"k{i}" for i in range(count)]
    assert {cluster.primary_for(k) for k in keys} == set(cluster.primaries())
    return keys


# --------------------------------------------------------------------------
# connecting


def test_a_cluster_url_connects_and_reads_and_writes_keys_in_every_slot(redis_cluster):
    client = connect(redis_cluster.url, name="gv-cluster-test")
    assert is_cluster(client) and not is_cluster(redis.Redis())
    keys = _keys_on_every_primary(redis_cluster)
    for i, key in enumerate(keys):
        client.set(key, i)
    assert [int(client.get(k)) for k in keys] == list(range(len(keys)))
    # every node connection carries the client name, as for a single Redis
    names = {c.get("name") for p in redis_cluster.primaries()
             for c in redis_cluster.node(p).client_list()}
    assert "gv-cluster-test" in names
    # job ids that are not UTF-8 still round-trip (encoding_errors=surrogateescape)
    assert client.get_encoder().encoding_errors == "surrogateescape"


def test_any_one_live_seed_is_enough(redis_cluster):
    dead = f"127.0.0.1:{free_port()}"
    one = redis_cluster.ports[3]
    client = connect(f"redis+cluster://{dead},127.0.0.1:{one}/")
    keys = _keys_on_every_primary(redis_cluster, 10)
    for key in keys:
        client.set(key, "x")
    assert client.get(keys[-1]) == b"x"


def test_no_reachable_seed_is_a_redis_error_that_is_transient():
    url = f"redis+cluster://127.0.0.1:{free_port()}/"
    with pytest.raises(ClusterUnavailable) as info:
        connect(url)
    assert isinstance(info.value, redis.RedisError) and is_transient(info.value)


def test_governor_client_enqueues_and_reads_jobs_through_the_cluster(redis_cluster):
    client = Client.from_url(redis_cluster.url, prefix=f"t{uuid.uuid4().hex[:10]}")
    job_id = client.enqueue("q", "m:f", 1)
    other = client.enqueue("r", "m:f", 2)  # another queue, most likely another slot
    record = client.job(job_id)
    assert record["state"] == "waiting" and record["args"] == [1]
    assert client.job(other, "r")["args"] == [2]
    counts = client.counts("q")
    assert counts["waiting"] == 1 and counts["enqueued_total"] == 1
    assert client.queues() == ["q", "r"]
    assert client.enqueue("q", "m:f", 1, job_id=job_id) == job_id  # an existing id: not twice
    assert client.counts("q")["waiting"] == 1


def test_scripts_are_reloaded_when_the_node_forgot_them(redis_cluster):
    client = Client.from_url(redis_cluster.url, prefix=f"t{uuid.uuid4().hex[:10]}")
    client.enqueue("q", "m:f", 1)
    for port in redis_cluster.primaries():  # as on a replica just promoted: an empty cache
        redis_cluster.node(port).script_flush()
    client.enqueue("q", "m:f", 2)
    assert client.counts("q")["waiting"] == 2


# Found while building this (issue 10): redis-py's ClusterPipeline blocks its evalsha() and
# script_load() methods (RedisClusterException when queued, before anything is sent), so
# queue.run with more than one call, and enqueue_many with over 1,000 jobs (MULTI/EXEC with
# SCRIPT LOAD), fail on a Cluster. pipe.execute_command("EVALSHA", ...) is not blocked; SCRIPT
# LOAD has no key, so it cannot be in a Cluster transaction (EVAL can, and caches the script).
def test_several_script_calls_in_one_pipeline(redis_cluster):
    client = Client.from_url(redis_cluster.url, prefix=f"t{uuid.uuid4().hex[:10]}")
    keys = client.keys("q")
    run(client.redis, keys.tick(60_000), keys.tick(60_000))


def test_enqueue_many_over_one_chunk(redis_cluster):
    client = Client.from_url(redis_cluster.url, prefix=f"t{uuid.uuid4().hex[:10]}")
    ids = client.enqueue_many("q", [{"handler": "m:f", "args": [i]} for i in range(1500)])
    assert len(ids) == 1500 and client.counts("q")["waiting"] == 1500


@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl CLI needed to make a test CA")
def test_rediss_cluster_with_a_password_and_client_certificates(tmp_path):
    from cluster import LocalCluster, make_pki

    pki = make_pki(tmp_path / "pki")
    cluster = LocalCluster(tmp_path / "cluster", password="cl-pw-Q7", tls=pki)
    try:
        cluster.start()
        assert cluster.url.startswith("rediss+cluster://:cl-pw-Q7@")
        tls = TlsConfig(ca=pki["ca"], cert=pki["cert"], key=pki["key"])
        client = Client.from_url(cluster.url, prefix="tls", tls=tls)
        job_id = client.enqueue("q", "m:f", "over-tls")
        assert client.job(job_id)["args"] == ["over-tls"]
        for key in _keys_on_every_primary(cluster, 10):
            client.redis.set(key, "x")
        # TLS and the password are really in force
        with pytest.raises(redis.exceptions.RedisError):
            connect(cluster.url.replace("rediss+", "redis+"))
        with pytest.raises(redis.AuthenticationError):  # not ClusterUnavailable: no outage
            connect(cluster.url.replace("cl-pw-Q7", "wrong"), tls=tls)
    finally:
        cluster.stop()


# --------------------------------------------------------------------------
# the descriptors a forked worker must close, and dropping every connection


def test_socket_fds_and_disconnect_cover_every_node(redis_cluster):
    client = connect(redis_cluster.url)
    for key in _keys_on_every_primary(redis_cluster):
        client.set(key, "x")
    fds = socket_fds(client)
    peers = set()
    for fd in fds:
        assert stat.S_ISSOCK(os.fstat(fd).st_mode)
        with socket.socket(fileno=os.dup(fd)) as sock:
            peers.add(sock.getpeername()[1])
    assert set(redis_cluster.primaries()) <= peers <= set(redis_cluster.ports)

    disconnect(client)
    assert socket_fds(client) == []
    assert client.get("k0") is not None  # the client goes on, on fresh connections
    assert socket_fds(client)


def test_disconnect_a_single_redis(redis_server):
    client = connect(redis_server.url)
    client.ping()
    assert socket_fds(client)
    disconnect(client)
    assert socket_fds(client) == []
    assert client.ping()


# --------------------------------------------------------------------------
# failover


def test_a_primary_failover_is_ridden_out_without_a_new_client(private_cluster, capsys):
    cluster = private_cluster
    client = Client.from_url(cluster.url, prefix=f"t{uuid.uuid4().hex[:10]}")
    job_id = client.enqueue("q", "m:f", "before")
    probe = client.keys("q").key("probe")  # the queue's slot
    client.redis.set(probe, 0)
    port = cluster.primary_for(probe)
    replica = cluster.replica_of(port)
    cluster.wait_replicated(port)

    promoted: dict[str, float] = {}

    def watch() -> None:
        promoted["port"] = cluster.wait_promoted(port, timeout=20)
        promoted["at"] = time.monotonic()

    # meanwhile another client of the same queue runs pipelines and transactions
    other = Client.from_url(cluster.url, prefix=client.prefix)
    piped: list[object] = []

    def pipelines() -> None:
        try:
            while "at" not in promoted:
                waiting = other.counts("q")["waiting"]  # a pipeline
                with other.redis.pipeline(transaction=True) as tx:
                    tx.incr(probe + "-tx")
                    tx.get(probe + "-tx")
                    piped.append((waiting, tx.execute()))
                time.sleep(0.02)
        except Exception as exc:  # reported by the assertion below
            piped.append(exc)

    side = threading.Thread(target=pipelines)
    side.start()
    cluster.kill_primary(port)
    killed = time.monotonic()
    watcher = threading.Thread(target=watch)
    watcher.start()
    recovered = None
    for i in range(1, 1000):
        client.redis.set(probe, i)  # blocks while the slot has no primary, then goes on
        assert int(client.redis.get(probe)) == i
        recovered = recovered or time.monotonic()
        if "at" in promoted:
            break
        time.sleep(0.02)
    watcher.join(20)
    side.join(20)
    assert "at" in promoted, "no replica was promoted"
    assert promoted["port"] == replica and cluster.primary_for(probe) == replica
    assert piped and not [r for r in piped if isinstance(r, Exception)], piped
    incrs = [int(replies[1]) for _, replies in piped]
    assert incrs == sorted(set(incrs))  # one at a time, none lost
    recovery, lag = recovered - killed, recovered - promoted["at"]
    with capsys.disabled():
        print(f"\nfailover: promoted {promoted['at'] - killed:.2f}s after the kill; "
              f"the client's first success came {recovery:.2f}s after it ({lag:+.2f}s)")
    assert lag < 2.0  # within about one backoff step (0.5 s) of the promotion

    # the queue goes on too: the promoted replica has the job, and loads the scripts it lacks
    assert client.job(job_id)["args"] == ["before"]
    client.enqueue("q", "m:f", "after")
    assert client.counts("q")["waiting"] == 2

    # and once every node is gone, a command gives up after the window with a transient error
    client.redis.failover_window = 0.5
    cluster.stop()
    started = time.monotonic()
    with pytest.raises(redis.RedisError) as info:
        client.redis.get(probe)
    assert is_transient(info.value) and time.monotonic() - started < 5


# --------------------------------------------------------------------------
# errors: what is worth riding out


def test_cluster_errors_are_transient_and_bugs_are_not(redis_cluster):
    client = connect(redis_cluster.url)
    key = "moved-probe"
    owner = redis_cluster.primary_for(key)
    elsewhere = next(p for p in redis_cluster.primaries() if p != owner)
    with pytest.raises(redis.exceptions.ResponseError) as moved:  # a real MOVED reply
        redis_cluster.node(elsewhere).get(key)
    assert isinstance(moved.value, redis.exceptions.MovedError) and is_transient(moved.value)
    with pytest.raises(redis.exceptions.RedisClusterException) as cross:  # a real bug
        client.execute_command("MSET", "{a}x", 1, "{b}y", 2)
    assert not is_transient(cross.value)
    for exc in (redis.exceptions.ClusterDownError("The cluster is down"),
                redis.exceptions.MasterDownError("Link with MASTER is down"),
                redis.exceptions.TryAgainError("Multiple keys request during rehashing"),
                redis.exceptions.AskError("3999 127.0.0.1:6381"),
                redis.exceptions.SlotNotCoveredError('Slot "1" is not covered by the cluster.'),
                redis.exceptions.ClusterError("TTL exhausted."),
                redis.exceptions.RedisClusterException(
                    "Redis Cluster cannot be connected. Please provide at least one reachable node")):
        assert is_transient(exc), exc
    assert not is_transient(redis.exceptions.CrossSlotTransactionError("different slots"))


# --------------------------------------------------------------------------
# URLs: parsed, masked, refused


# (url, auth username, auth password, hosts, masked)
CLUSTER_URLS = [
    ("redis+cluster://127.0.0.1:7000,127.0.0.1:7001/", None, None,
     (("127.0.0.1", 7000), ("127.0.0.1", 7001)), "redis+cluster://127.0.0.1:7000,127.0.0.1:7001/"),
    ("redis+cluster://:p@ss-C1@h1,h2:7001", None, "p@ss-C1", (("h1", None), ("h2", 7001)),
     "redis+cluster://:***@h1,h2:7001"),
    ("rediss+cluster://app:s3cr%40t-C2@h1:7000/0", "app", "s3cr@t-C2", (("h1", 7000),),
     "rediss+cluster://app:***@h1:7000/0"),
    ("rediss+cluster://h1/?username=app&password=qs-C3", "app", "qs-C3", (("h1", None),),
     "rediss+cluster://h1/?username=app&password=***"),
    ("redis+cluster://[::1]:7000,h2/?db=0", None, None, (("::1", 7000), ("h2", None)),
     "redis+cluster://[::1]:7000,h2/?db=0"),
]


@pytest.mark.parametrize("url, username, password, hosts, masked", CLUSTER_URLS)
def test_cluster_urls_parse_and_mask(url, username, password, hosts, masked):
    parsed = redisurl.parse(url)
    assert parsed.is_cluster and redisurl.is_cluster(url)
    assert (parsed.auth_username, parsed.auth_password, parsed.hosts) == (username, password, hosts)
    assert parsed.masked() == masked == mask_url(url)
    assert redisurl.parse(masked).masked() == masked
    assert not redisurl.is_cluster(url.replace("+cluster", ""))


@pytest.mark.parametrize("url, secret, says", [
    ("redis+cluster://:pw-C4@h1:7000/1", "pw-C4", "only database 0"),
    ("redis+cluster://:pw-C4@h1:7000/?db=2", "pw-C4", "only database 0"),
    ("rediss+cluster://:pw-C4@h1,/", "pw-C4", "names its seed nodes"),
    ("redis+cluster://:pw-C4@h1/?ssl_cert_reqs=none", "pw-C4", "takes only the query parameters"),
    ("redis+cluster://:pw/C4@h1/", "pw/C4", "percent-encode"),
])
def test_unusable_cluster_urls_are_refused_without_quoting_the_secret(url, secret, says):
    with pytest.raises(redisurl.RedisURLError) as info:
        redisurl.parse(url)
    assert says in str(info.value) and secret not in str(info.value)
    with pytest.raises(ConfigError) as info:
        parse_config({"redis": {"url": url}, "queues": {"a": 1}})
    assert secret not in str(info.value)
    assert secret not in mask_url(url) and "C4" not in mask_url(url)


def test_the_error_for_an_unknown_scheme_lists_the_cluster_schemes():
    with pytest.raises(redisurl.RedisURLError, match=r"redis\+cluster://, rediss\+cluster://"):
        redisurl.parse("cluster://h")
