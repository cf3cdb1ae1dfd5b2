"""Real network partitions for tests: a master in a network namespace of its own, joined to
the test's Redis by one veth pair that a test can cut and heal.

Why a namespace and a veth rather than stopping Redis or a proxy: a partition is not a
refused connection. Cut here, packets are dropped silently in both directions, so a TCP
connection stalls (no RST, no FIN, no error) and a new connection attempt times out, exactly
what a master sees when its host's switch port dies; healed, the stalled connections resume.
Stopping Redis or killing a proxy resets connections instead, which code under test would
notice at once.

Layout (one per test; every name and address is private to it):

    root namespace (the test, redis-server)          namespace NAME (the master)
    127.0.0.1 + address_root/30 on link_root  <-veth->  address_ns/30 on link_ns, lo up

* Names are ``gvp<pid>-<n>`` (pid of the pytest process and a counter, in hex): parallel
  sessions never collide, and leftovers of a dead session are recognised by their dead pid.
* Addresses are a /30 from 10.251.0.0/16 picked from the pid and counter, skipping any /30
  already in use on this host. The namespace has no other link and no default route: it can
  reach address_root and nothing else.
* ``cut()`` sets the root-side end down. Its connected route then disappears; a blackhole
  route for the /30 (added at creation, kept until the end) takes over, so what the root side
  sends to the namespace is discarded instead of following the default route off the host.
  Neighbour entries are permanent on both sides: no ARP, so no "host unreachable" after ARP
  fails either; the namespace's packets are dropped by the veth. IPv6 is off on the pair.

Requires root, iproute2 (``ip``, ``ss``) and a kernel with network namespaces and veth; the
fixtures skip with the reason otherwise.

Usage (the fixtures come with ``pytest_plugins = ("netns",)`` in the test module; import
other names from netns inside the test functions, or pytest warns that it cannot rewrite
the module it then loads as a plugin)::

    pytest_plugins = ("netns",)

    def test_something(ns_governor, partition, partition_redis, tmp_path):
        ns_governor.start({"w": {"concurrency": 1}}, lease="2s")   # master inside the namespace
        job = ns_governor.client.enqueue("w", "tasks:record", "a")  # test talks via 127.0.0.1
        partition.cut()      # the master's host is cut off from Redis: packets dropped
        ...
        partition.heal()     # returns once the namespace reaches Redis again
        # "another host" that is not cut: a plain Governor on 127.0.0.1, same Redis
        from conftest import Governor
        (tmp_path / "b").mkdir()
        other = Governor(tmp_path / "b", partition_redis.url)
        other.prefix = ns_governor.prefix  # before start: same queues (other.client keeps its own)
        other.start({"w": {"concurrency": 1}}, lease="2s")
        ...
        other.stop()  # yours to stop

Both "hosts" share this machine's hostname, boot id and pid namespace, so governor's worker
ids (identity.py) call the other's workers local: one whose process is gone is requeued at
once by either master, without waiting for its lease, as a real second host could not.

Two cut-able hosts: two Partitions (``new_partition()``, closed by the test), one
``PartitionRedis(dir, [p1, p2])`` and ``namespaced_governor(dir, redis, p2)``.

Fixtures: ``partition`` (a Partition, linked), ``partition_redis`` (a PartitionRedis on
127.0.0.1 and address_root, private to the test), ``ns_governor`` (a NamespacedGovernor, not
started, files under tmp_path exactly like the ``governor`` fixture: records/, state/,
tasks.py, governor.log). Teardown heals a cut link before stopping the master and Redis, and
removes the partition even when the test failed; the first partition of a session removes
what SIGKILLed sessions left (``sweep_leftovers``).
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest

from governor import Client

from harness import Governor, RedisServer

PREFIX = "gvp"  # every namespace, link and name this module creates starts with it
NETWORK = ipaddress.ip_network("10.251.0.0/16")  # private; carved into /30s
BLACKHOLE_METRIC = 4242  # marks our blackhole routes, so a sweep can recognise them
_NAME = re.compile(rf"^{PREFIX}([0-9a-f]+)-([0-9a-f]+)$")
_counter = itertools.count()
_live: set[str] = set()  # names of this process's partitions, created and not yet closed


class Unsupported(Exception):
    """The kernel refused a namespace or a veth (no privilege in a container, no veth);
    new_partition() and the fixtures turn it into a skip."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


def require_netns() -> None:
    """Skips the calling test (with the reason) where partitions cannot be made."""
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces and veth links (ip netns)")
    if not shutil.which("ip") or not shutil.which("ss"):
        pytest.skip("needs iproute2 (ip, ss): apt-get install -y iproute2")
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip(f"`ip netns` is not available: {listed.stderr.strip()}")


def _is_leftover(name: str) -> bool:
    """Named after a pytest process that is gone, or after ours but not made by us (an
    earlier process had our pid)."""
    match = _NAME.match(name)
    if not match:
        return False
    pid = int(match.group(1), 16)
    return name not in _live if pid == os.getpid() else not _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    """A zombie is dead: where nothing reaps a SIGKILLed pytest, its pid lingers as one."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _open_sockets_to(address: str) -> list[str]:
    """Root-side TCP sockets that may still send to ``address`` (TIME-WAIT sends nothing)."""
    out = subprocess.run(["ss", "-Htan", "dst", address], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line and not line.startswith("TIME-WAIT")]


class Partition:
    """A network namespace and the veth pair joining it to the root namespace.

    ``create()`` (or ``with Partition() as p``) builds it; ``close()`` removes it: processes
    started in it are killed, the pair, the namespace and the route go. Safe to call twice.
    """

    def __init__(self) -> None:
        n = next(_counter) % 0x1000
        self.name = f"{PREFIX}{os.getpid():x}-{n:x}"  # <= 14 chars: links are limited to 15
        self.link_root = self.name + "r"
        self.link_ns = self.name + "n"  # inside the namespace
        self.subnet = _free_subnet(os.getpid() * 64 + n)
        hosts = list(self.subnet.hosts())
        self.address_root = str(hosts[0])  # what Redis binds to, and the master's URL names
        self.address_ns = str(hosts[1])    # the master's address, as Redis sees it
        self.cut_since: float | None = None
        self.procs: list[subprocess.Popen] = []
        self._created = False

    def __enter__(self) -> Partition:
        if not self._created:  # new_partition() returns one already created
            self.create()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def is_cut(self) -> bool:
        return self.cut_since is not None

    def create(self) -> None:
        """Namespace, veth pair, addresses, permanent neighbours, blackhole; then checks that
        the namespace reaches address_root. Raises Unsupported when the kernel refuses."""
        added = subprocess.run(["ip", "netns", "add", self.name], capture_output=True, text=True)
        if added.returncode != 0:
            raise Unsupported(f"ip netns add: {added.stderr.strip()}")
        self._created = True
        _live.add(self.name)
        try:
            self._build()
            self._wait_reachable(5.0)
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        mac = f"02:67:76:{self.subnet.network_address.packed[2]:02x}:" \
              f"{self.subnet.network_address.packed[3]:02x}"
        mac_root, mac_ns = mac + ":01", mac + ":02"
        made = _ip("link", "add", self.link_root, "address", mac_root, "type", "veth",
                   "peer", "name", self.link_ns, "address", mac_ns, "netns", self.name, check=False)
        if made.returncode != 0:
            raise Unsupported(f"ip link add ... type veth: {made.stderr.strip()}")
        ns = ("-n", self.name)
        # no IPv6 link-local addresses: nothing on the pair but what the test sends
        _ip("link", "set", self.link_root, "addrgenmode", "none", check=False)
        _ip(*ns, "link", "set", self.link_ns, "addrgenmode", "none", check=False)
        prefix = self.subnet.prefixlen
        # order matters for a concurrent sweep: the address exists before the blackhole does
        _ip("addr", "add", f"{self.address_root}/{prefix}", "dev", self.link_root)
        _ip("route", "add", "blackhole", str(self.subnet), "metric", str(BLACKHOLE_METRIC))
        _ip(*ns, "addr", "add", f"{self.address_ns}/{prefix}", "dev", self.link_ns)
        _ip("neigh", "replace", self.address_ns, "lladdr", mac_ns, "dev", self.link_root,
            "nud", "permanent")
        _ip(*ns, "neigh", "replace", self.address_root, "lladdr", mac_root, "dev", self.link_ns,
            "nud", "permanent")
        _ip(*ns, "link", "set", "lo", "up")
        _ip(*ns, "link", "set", self.link_ns, "up")
        _ip("link", "set", self.link_root, "up")

    # -- running things inside -------------------------------------------------------

    def run(self, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen:
        """Starts ``argv`` inside the namespace (``ip netns exec``, which execs: the Popen's
        pid is the program's own). Environment (unless ``env=``), cwd, files, pids and unix
        sockets are the caller's; the network differs, and /sys: ip gives the program a
        mount namespace with the namespace's own sysfs, where /sys/fs/cgroup is not mounted
        (`nsenter --net=/run/netns/NAME` would keep the mounts, should that ever matter).
        The process, and whatever else is in the namespace, is killed by close()."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, *argv], **popen_kwargs)
        self.procs.append(proc)
        return proc

    def pids(self) -> list[int]:
        """Every process in the namespace, from the process table."""
        out = _ip("netns", "pids", self.name, check=False).stdout
        return [int(p) for p in out.split()]

    # -- the partition ------------------------------------------------------------------

    def cut(self) -> None:
        """Drops every packet between the namespace and the root side, silently, from now on.
        Established connections stall (no RST/FIN reaches either side); new ones time out."""
        _ip("link", "set", self.link_root, "down")
        if self.cut_since is None:
            self.cut_since = time.monotonic()
        # the one way this could send traffic elsewhere: no blackhole, so the default route
        # would carry the root side's replies off the host. Refuse to go on if so.
        route = _ip("route", "get", self.address_ns, check=False)
        if route.returncode == 0:
            self.heal()
            raise RuntimeError(f"cut: {self.address_ns} still routed ({route.stdout.strip()}); "
                               "the blackhole route is missing")

    def heal(self, timeout: float = 5.0) -> None:
        """Lets packets through again and returns once a new TCP connection from the namespace
        to address_root succeeds. Stalled connections resume at their next retransmission
        (the kernel backs off: after a long cut that can take seconds)."""
        _ip("link", "set", self.link_root, "up")
        self.cut_since = None
        self._wait_reachable(timeout)

    def _wait_reachable(self, timeout: float) -> None:
        with socket.socket() as listener:
            listener.bind((self.address_root, 0))
            listener.listen()
            port = listener.getsockname()[1]
            probe = self.run([sys.executable, "-I", "-S", "-c", _PROBE, self.address_root,
                              str(port), str(timeout)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
            out, _ = probe.communicate(timeout=timeout + 10)
            self.procs.remove(probe)
        if probe.returncode != 0:
            raise RuntimeError(f"{self.name}: {self.address_root}:{port} not reachable from the "
                               f"namespace within {timeout}s: {out.decode(errors='replace')}")

    # -- teardown ------------------------------------------------------------------------

    def close(self) -> None:
        """Kills what runs inside, lets the root side's connections to it close over a live
        link, then removes the pair, the namespace and the blackhole route.

        The blackhole goes last, and only when no root-side socket could still send to
        address_ns (else it stays, and the next session's sweep removes it): a segment
        retransmitted after the route is gone would follow the default route off the host."""
        if not self._created:
            return
        self._created = False
        _ip("link", "set", self.link_root, "up", check=False)  # closes must not be blackholed
        self.cut_since = None
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()
        for pid in self.pids():  # what those started (workers, sentries): ours too
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while (self.pids() or _open_sockets_to(self.address_ns)) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _open_sockets_to(self.address_ns):  # peers gone: a RST over the live link ends them
            subprocess.run(["ss", "-K", "-Htan", "dst", self.address_ns], capture_output=True)
        _ip("link", "del", self.link_root, check=False)
        _ip("netns", "del", self.name, check=False)
        _live.discard(self.name)
        if not _open_sockets_to(self.address_ns):
            _ip("route", "del", "blackhole", str(self.subnet), "metric", str(BLACKHOLE_METRIC),
                check=False)


_PROBE = """
import socket, sys, time
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + timeout
while True:
    try:
        socket.create_connection((host, port), timeout=0.25).close()
        sys.exit(0)
    except OSError as exc:
        if time.monotonic() > deadline:
            sys.exit(f"{exc}")
        time.sleep(0.02)
"""


def _used_subnets() -> set[ipaddress.IPv4Network]:
    """/30s of NETWORK that hold an address or one of our blackhole routes on this host."""
    used = set()
    for line in _ip("-o", "-4", "addr", "show").stdout.splitlines():
        match = re.search(r"inet (\S+)", line)
        if match:
            iface = ipaddress.ip_interface(match.group(1))
            if iface.ip in NETWORK:
                used.add(ipaddress.ip_network(f"{iface.ip}/30", strict=False))
    for line in _ip("route", "show", "type", "blackhole").stdout.splitlines():
        net = ipaddress.ip_network(line.split()[1], strict=False)
        if net.subnet_of(NETWORK):
            used.add(ipaddress.ip_network(f"{net.network_address}/30", strict=False))
    return used


def _free_subnet(seed: int) -> ipaddress.IPv4Network:
    blocks = NETWORK.num_addresses // 4
    used = _used_subnets()
    for i in range(blocks):
        base = int(NETWORK.network_address) + ((seed + i) % blocks) * 4
        net = ipaddress.ip_network(f"{ipaddress.ip_address(base)}/30")
        if net not in used:
            return net
    raise RuntimeError(f"no free /30 left in {NETWORK}")


def sweep_leftovers() -> list[str]:
    """Removes what partitions of dead pytest processes left behind (a SIGKILLed session
    runs no teardown): namespaces and links named after a pid that no longer exists, and our
    blackhole routes that guard no address (their sockets to the vanished namespace are
    aborted first, ``ss -K``; where the kernel cannot, the route stays until they time out).
    A live session's partitions keep their address and name, so parallel sessions are safe.
    Processes still inside a leftover namespace are not touched: they are not this
    session's. Returns what was removed."""
    removed = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if _is_leftover(name):
            _ip("netns", "del", name, check=False)
            removed.append(f"netns {name}")
    for line in _ip("-o", "link", "show").stdout.splitlines():
        fields = line.split(":")
        if len(fields) < 2:
            continue
        link = fields[1].strip().split("@")[0]
        if link.endswith("r") and _is_leftover(link[:-1]):
            _ip("link", "del", link, check=False)
            removed.append(f"link {link}")
    addresses = set()
    for line in _ip("-o", "-4", "addr", "show").stdout.splitlines():
        match = re.search(r"inet (\S+)", line)
        if match:
            addresses.add(ipaddress.ip_interface(match.group(1)).ip)
    for line in _ip("route", "show", "type", "blackhole").stdout.splitlines():
        words = line.split()
        if len(words) < 4 or words[2:4] != ["metric", str(BLACKHOLE_METRIC)]:
            continue
        net = ipaddress.ip_network(words[1], strict=False)
        if not net.subnet_of(NETWORK) or any(a in net for a in addresses):
            continue
        address_ns = str(list(net.hosts())[1])
        if _open_sockets_to(address_ns):  # its namespace is gone: they can never finish
            subprocess.run(["ss", "-K", "-Htan", "dst", address_ns], capture_output=True)
        if not _open_sockets_to(address_ns):
            _ip("route", "del", "blackhole", str(net), "metric", str(BLACKHOLE_METRIC), check=False)
            removed.append(f"route blackhole {net}")
    return removed


# -- Redis and masters across the partition ---------------------------------------------------


class PartitionRedis(RedisServer):
    """A private redis-server on 127.0.0.1 (``url``: the test, and masters in the root
    namespace) and on the address_root of each partition given (``url_for(p)``: masters
    inside p), one free port. Protected mode is off, or Redis would refuse the namespaces'
    connections: it listens on nothing but loopback and the private pairs. ``extra`` are
    more redis-server arguments, as for RedisServer."""

    def __init__(self, workdir: Path, partitions: Partition | Sequence[Partition],
                 *extra: str) -> None:
        self.partitions = [partitions] if isinstance(partitions, Partition) else list(partitions)
        addresses = [p.address_root for p in self.partitions]
        super().__init__(workdir, "--bind", "127.0.0.1", *addresses,  # the last --bind wins
                         "--protected-mode", "no", *extra)

    @property
    def partition(self) -> Partition:
        return self.partitions[0]

    def url_for(self, partition: Partition) -> str:
        """The URL a master inside ``partition`` uses: its root-side address."""
        return f"redis://{partition.address_root}:{self.port}/0"

    @property
    def url_ns(self) -> str:
        return self.url_for(self.partition)


class NamespacedGovernor(Governor):
    """A `governor run` inside ``partition`` (default: the Redis server's first): it reaches
    Redis over the veth; the test's own client (``.client``) uses 127.0.0.1, so it still works
    while cut. status(), children(), signal(), stop() work as for Governor: the control
    socket is a file, and the process table is shared. Everything it forks (workers, its
    sentry) is in the namespace too, like the processes of one host."""

    def __init__(self, tmp_path: Path, redis_server: PartitionRedis,
                 partition: Partition | None = None) -> None:
        self.partition = partition or redis_server.partition
        super().__init__(tmp_path, redis_server.url_for(self.partition))
        self.client = Client.from_url(redis_server.url, prefix=self.prefix)

    def launch(self, argv: list[str], **popen_kwargs: Any) -> subprocess.Popen:
        """As Governor's, but inside the partition."""
        return self.partition.run(argv, **popen_kwargs)


def namespaced_governor(tmp_path: Path, redis_server: PartitionRedis,
                        partition: Partition | None = None) -> NamespacedGovernor:
    """A NamespacedGovernor (not started) with its files under tmp_path (created); the
    caller stops it (g.stop(); the ns_governor fixture does this for its own)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    return NamespacedGovernor(tmp_path, redis_server, partition)


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def partition_sweep() -> list[str]:
    """Once per session, before the first partition: removes dead sessions' leftovers."""
    require_netns()
    return sweep_leftovers()


def new_partition() -> Partition:
    """A created Partition, or the calling test skipped with the reason. The caller closes
    it (``with new_partition() as p:``); the ``partition`` fixture does this for you."""
    require_netns()
    p = Partition()
    try:
        p.create()
    except Unsupported as exc:
        pytest.skip(f"cannot make a network namespace here: {exc}")
    return p


@pytest.fixture
def partition(partition_sweep: list[str]) -> Iterator[Partition]:
    """A Partition, created (linked, not cut); removed after the test, failed or not."""
    p = new_partition()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def partition_redis(tmp_path: Path, partition: Partition) -> Iterator[PartitionRedis]:
    server = PartitionRedis(tmp_path / "redis", partition)
    server.start()
    yield server
    if partition.is_cut:
        partition.heal()  # its connections close over a live link, not into the blackhole
    server.stop()


@pytest.fixture
def ns_governor(tmp_path: Path, partition_redis: PartitionRedis) -> Iterator[NamespacedGovernor]:
    """A NamespacedGovernor (not started), files under tmp_path like the `governor` fixture."""
    g = namespaced_governor(tmp_path, partition_redis)
    yield g
    if g.partition.is_cut:
        g.partition.heal()  # a clean stop, and nothing left stalled
    g.stop()
