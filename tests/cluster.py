"""A real Redis Cluster on loopback for tests: 3 primaries and 3 replicas, each its own
redis-server process, joined with ``redis-cli --cluster create``.

Why real processes: what a client sees while a primary dies (refused connections, then
CLUSTERDOWN, then MOVED to the promoted replica) comes from the servers' gossip and
election, which no fake reproduces. ``cluster-node-timeout`` is short (1 s by default) so a
failover completes in about 2 s.

Every node takes two free ports, its client port and its cluster bus port (``cluster-port``;
the default, port + 10000, may be taken or beyond 65535), and keeps its ``nodes.conf`` in a
directory of its own, so sessions never collide and a killed node can be restarted into the
cluster (``restart``), where it rejoins as a replica of whoever took over its slots.

Usage (the fixtures come with ``pytest_plugins = ("cluster",)`` in the test module; import
other names from cluster inside the test functions, or pytest warns that it cannot rewrite
the module it then loads as a plugin)::

    pytest_plugins = ("cluster",)

    def test_reads_and_writes(redis_cluster):        # shared by the session: do not kill nodes
        client = connect(redis_cluster.url)
        ...

    def test_failover(private_cluster):              # the test's own: kill what you like
        port = private_cluster.primary_for("{q}:x")
        private_cluster.kill_primary(port)
        new = private_cluster.wait_promoted(port, timeout=15)

Needs ``redis-server`` and ``redis-cli`` (Debian: redis-server depends on redis-tools,
which ships redis-cli); the fixtures fail, not skip, when either is missing.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from harness import free_port, wait_for

SLOTS = 16384


class LocalCluster:
    """``primaries`` x (1 + ``replicas``) redis-server processes in cluster mode under
    ``workdir``, on 127.0.0.1 only; ``start()`` returns when every node agrees the cluster
    is ok, all slots are covered, and every replica is in sync with its primary.

    ``password``: every node requires it (and replicas use it with their primaries).
    ``tls``: {"ca", "cert", "key"} file paths; the nodes then speak only TLS, to clients, to
    each other and to replicas, and require client certificates signed by that CA."""

    def __init__(self, workdir: Path, primaries: int = 3, replicas: int = 1,
                 node_timeout_ms: int = 1000, password: str | None = None,
                 tls: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.password = password
        self.tls = tls
        self.primary_count = primaries
        self.replica_count = replicas
        self.node_timeout_ms = node_timeout_ms
        count = primaries * (1 + replicas)
        ports = _distinct_free_ports(2 * count)
        self.ports = ports[:count]
        self.bus_ports = dict(zip(self.ports, ports[count:], strict=True))
        self.procs: dict[int, subprocess.Popen] = {}
        self._served: dict[int, list[tuple[int, int]]] = {}  # slots of a killed primary

    @property
    def url(self) -> str:
        """Every node as a seed: the client still finds the cluster with any of them dead."""
        scheme = "rediss+cluster" if self.tls else "redis+cluster"
        auth = f":{self.password}@" if self.password else ""
        return f"{scheme}://{auth}" + ",".join(f"127.0.0.1:{p}" for p in self.ports) + "/"

    def node(self, port: int) -> redis.Redis:
        """A plain (non-cluster) client of one node, for CLUSTER commands and checks."""
        tls = {}
        if self.tls:
            tls = {"ssl": True, "ssl_ca_certs": self.tls["ca"], "ssl_certfile": self.tls["cert"],
                   "ssl_keyfile": self.tls["key"]}
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2,
                           password=self.password, **tls)

    # -- lifecycle --------------------------------------------------------------

    def start(self, timeout: float = 30) -> LocalCluster:
        cli = _binary("redis-cli")
        for port in self.ports:
            self._spawn(port)
        for port in self.ports:
            wait_for(lambda p=port: self._answers(p), 10, f"cluster node {port} to answer")
        create = subprocess.run(
            [cli, *self._cli_options(), "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", str(self.replica_count), "--cluster-yes"],
            capture_output=True, text=True, timeout=timeout)
        if create.returncode != 0:
            raise AssertionError(f"redis-cli --cluster create failed:\n{create.stdout}\n{create.stderr}")
        wait_for(self.healthy, timeout, "every node to report cluster_state:ok with all slots and "
                 "replicas in sync", interval=0.05)
        return self

    def stop(self) -> None:
        """Ends every node this object started, by pid (SIGKILL after 10 s of SIGTERM)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _cli_options(self) -> list[str]:
        options = ["-a", self.password, "--no-auth-warning"] if self.password else []
        if self.tls:
            options += ["--tls", "--cacert", self.tls["ca"], "--cert", self.tls["cert"],
                        "--key", self.tls["key"]]
        return options

    def _server_options(self, port: int) -> list[str]:
        options = ["--port", str(port)]
        if self.password:
            options += ["--requirepass", self.password, "--masterauth", self.password]
        if self.tls:
            options = ["--port", "0", "--tls-port", str(port), "--tls-cluster", "yes",
                       "--tls-replication", "yes", "--tls-cert-file", self.tls["cert"],
                       "--tls-key-file", self.tls["key"], "--tls-ca-cert-file", self.tls["ca"],
                       "--tls-auth-clients", "yes", *options[2:]]
        return options

    def _spawn(self, port: int) -> None:
        node_dir = self.workdir / f"node-{port}"
        node_dir.mkdir(parents=True, exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [_binary("redis-server"), *self._server_options(port), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-port", str(self.bus_ports[port]),
             "--cluster-node-timeout", str(self.node_timeout_ms),
             # a replica may take over however long it was cut off: tests kill at will
             "--cluster-replica-validity-factor", "0",
             "--repl-diskless-sync-delay", "0",  # a replica syncs at once, not after 5 s
             "--save", "", "--appendonly", "no", "--dir", str(node_dir),
             "--logfile", str(node_dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _answers(self, port: int) -> bool:
        proc = self.procs[port]
        if proc.poll() is not None:
            log = self.workdir / f"node-{port}" / "redis.log"
            raise AssertionError(f"cluster node {port} exited with {proc.returncode}:\n"
                                 f"{log.read_text() if log.exists() else ''}")
        try:
            return bool(self.node(port).ping())
        except redis.ConnectionError:
            return False

    # -- what the cluster looks like ---------------------------------------------

    def alive(self) -> list[int]:
        return [p for p in self.ports if self.procs[p].poll() is None]

    def nodes(self, via: int | None = None) -> list[dict]:
        """CLUSTER NODES as seen by ``via`` (default: the first live node): one dict per node
        with port, id, flags (a set), master (id or None) and slots (how many it serves)."""
        port = via if via is not None else self.alive()[0]
        raw = self.node(port).execute_command("CLUSTER", "NODES")
        text = raw.decode() if isinstance(raw, bytes) else raw
        out = []
        for line in text.splitlines():
            fields = line.split()
            flags = set(fields[2].split(","))
            out.append({"id": fields[0], "port": int(fields[1].split("@")[0].rsplit(":", 1)[1]),
                        "flags": flags, "master": None if fields[3] == "-" else fields[3],
                        "slots": _slot_count(fields[8:])})
        return out

    def primaries(self) -> list[int]:
        """The ports of the primaries serving slots now (as the first live node sees it)."""
        return sorted(n["port"] for n in self.nodes()
                      if "master" in n["flags"] and "fail" not in n["flags"] and n["slots"])

    def replica_of(self, port: int) -> int:
        """The port of a replica of the primary on ``port``."""
        nodes = self.nodes()
        primary = next(n for n in nodes if n["port"] == port)
        replicas = [n["port"] for n in nodes if n["master"] == primary["id"] and "fail" not in n["flags"]]
        if not replicas:
            raise AssertionError(f"node {port} has no live replica")
        return replicas[0]

    def primary_for(self, key: str) -> int:
        """The port of the primary that serves ``key``'s slot now."""
        node = self.node(self.alive()[0])
        return self._owner(node.execute_command("CLUSTER", "KEYSLOT", key))

    def _slots(self, via: int | None = None) -> list[tuple[int, int, int]]:
        """(first slot, last slot, primary's port) per range, from CLUSTER SLOTS."""
        node = self.node(via if via is not None else self.alive()[0])
        return [(start, end, int(primary[1]))
                for start, end, primary, *_ in node.execute_command("CLUSTER", "SLOTS")]

    def _owner(self, slot: int, via: int | None = None) -> int | None:
        return next((port for start, end, port in self._slots(via) if start <= slot <= end), None)

    def _slot_ranges(self, port: int) -> list[tuple[int, int]]:
        return [(start, end) for start, end, owner in self._slots() if owner == port]

    def healthy(self) -> bool:
        """Every live node says cluster_state:ok, all slots ok, the same node count, and every
        live replica's link to its primary is up."""
        alive = self.alive()
        try:
            for port in alive:
                info = _cluster_info(self.node(port))
                if (info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(SLOTS)
                        or int(info.get("cluster_known_nodes", 0)) != len(self.ports)):
                    return False
                repl = self.node(port).info("replication")
                if repl.get("role") == "slave" and repl.get("master_link_status") != "up":
                    return False
        except redis.RedisError:
            return False
        return True

    def wait_replicated(self, port: int, timeout: float = 10) -> None:
        """Waits until every replica of the primary on ``port`` has all its writes, so that
        killing it loses nothing (replication is asynchronous)."""
        primary = self.node(port)

        def caught_up() -> bool:
            info = primary.info("replication")
            offset = info["master_repl_offset"]
            replicas = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
            return bool(replicas) and all(r["offset"] >= offset for r in replicas)

        wait_for(caught_up, timeout, f"the replicas of {port} to catch up")

    # -- failover -----------------------------------------------------------------

    def kill_primary(self, port: int) -> None:
        """SIGKILL the node on ``port`` (a primary): no shutdown, no last words to replicas."""
        self._served[port] = self._slot_ranges(port)
        proc = self.procs[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def wait_promoted(self, old_port: int, timeout: float = 15) -> int:
        """Waits until another node serves the slots ``old_port`` served (before
        ``kill_primary``) and every live node says cluster_state:ok again; returns the new
        primary's port."""
        ranges = self._served.get(old_port) or self._slot_ranges(old_port)
        if not ranges:
            raise AssertionError(f"node {old_port} served no slots")
        slot = ranges[0][0]

        def promoted() -> int | None:
            owners = set()
            for port in self.alive():
                try:
                    if not _cluster_state_ok(self.node(port)):
                        return None
                    owners.add(self._owner(slot, via=port))
                except redis.RedisError:
                    return None
            new = owners.pop() if len(owners) == 1 else old_port
            return new if new != old_port else None

        return wait_for(promoted, timeout, f"a replica of {old_port} to take over its slots",
                        interval=0.05)

    def restart(self, port: int, timeout: float = 15) -> None:
        """Starts a killed node again with its nodes.conf: it rejoins (as a replica of the
        node that took its slots) and this returns when the cluster is healthy again."""
        self._spawn(port)
        wait_for(lambda: self._answers(port), 10, f"cluster node {port} to answer")
        wait_for(lambda: self._rejoined(port), timeout, f"node {port} to rejoin as a replica",
                 interval=0.05)

    def _rejoined(self, port: int) -> bool:
        """A replica again, in sync, and no live node still flags it as failed."""
        try:
            if self.node(port).info("replication").get("role") != "slave" or not self.healthy():
                return False
            return all("fail" not in n["flags"] and "fail?" not in n["flags"]
                       for via in self.alive() for n in self.nodes(via) if n["port"] == port)
        except redis.RedisError:
            return False


def make_pki(directory: Path) -> dict[str, str]:
    """A throw-away CA and one certificate it signed for 127.0.0.1, made with the openssl CLI;
    returns {"ca", "cert", "key"}, for both ends: the nodes present the certificate to each
    other and to clients, and clients present it to the nodes."""
    openssl = _binary("openssl")
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True)

    # EC keys: made in milliseconds, where RSA takes about a second
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
        "-subj", "/CN=governor-test-ca")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("req", *ec, "-keyout", "node.key", "-out", "node.csr", "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", "node.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "node.crt", "-days", "1", "-extfile", "san.ext")
    return {"ca": str(directory / "ca.crt"), "cert": str(directory / "node.crt"),
            "key": str(directory / "node.key")}


def _binary(name: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} is not installed (apt-get install -y redis-server; redis-cli comes "
                    "with it, in redis-tools)")
    return path


def _distinct_free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _slot_count(ranges: list[str]) -> int:
    """How many slots ``CLUSTER NODES`` lists for a node ("0-5460", "5461", or "[..]" for a
    slot being migrated, not counted)."""
    count = 0
    for item in ranges:
        if item.startswith("["):
            continue
        start, _, end = item.partition("-")
        count += int(end or start) - int(start) + 1
    return count


def _cluster_info(client: redis.Redis) -> dict[str, str]:
    raw = client.execute_command("CLUSTER", "INFO")
    text = raw.decode() if isinstance(raw, bytes) else raw
    return dict(line.split(":", 1) for line in text.split() if ":" in line)


def _cluster_state_ok(client: redis.Redis) -> bool:
    try:
        return _cluster_info(client).get("cluster_state") == "ok"
    except redis.RedisError:
        return False


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One cluster per test module, for tests that read and write (stopped after the module:
    six idle servers would otherwise weigh on the timing of every later test); a test that
    kills or restarts nodes takes ``private_cluster`` instead. Starting takes about 2 s, most of it
    Redis holding a new primary back (2 s from its start) before it serves."""
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def private_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A cluster of the test's own, stopped after it, however many nodes it killed."""
    cluster = LocalCluster(tmp_path / "cluster")
    try:
        yield cluster.start()
    finally:
        cluster.stop()
