"""How a worker is named in Redis, so that a master can tell whether it still lives.

``host:boot:pidns:pid:starttime``. The start time (clock ticks since boot,
from /proc/PID/stat) makes the name unique even when the kernel reuses the
pid; the boot id and the pid-namespace inode keep two containers that share a
hostname (host networking, a fixed compose ``hostname:``) from mistaking each
other's live workers for dead ones. A master restarted after a crash looks at
the leases and requeues at once only the jobs of workers it can prove are gone.
"""

from __future__ import annotations

import os
import socket


def _read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return "0"


HOST = socket.gethostname()
BOOT = _read("/proc/sys/kernel/random/boot_id").replace("-", "")[:12]
try:
    PIDNS = str(os.stat("/proc/self/ns/pid").st_ino)
except OSError:
    PIDNS = "0"
_PREFIX = f"{HOST}:{BOOT}:{PIDNS}"


def _starttime(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()
    if fields[0] in (b"Z", b"X"):
        return None  # a zombie is dead: only its exit status waits for a parent that may never reap
    return fields[19].decode()  # field 22 of proc(5), counted after "pid (comm)"


def worker_id(pid: int) -> str:
    return f"{_PREFIX}:{pid}:{_starttime(pid) or 0}"


def pid_of(wid: str) -> int:
    return int(wid.split(":")[-2])


def is_local_and_dead(wid: str) -> bool:
    """True only when ``wid`` names a process of this host, boot and pid namespace that no
    longer exists; anything else (another host, another container) is left to its lease."""
    prefix, _, rest = wid.rpartition(":")
    prefix, _, pid = prefix.rpartition(":")
    if prefix != _PREFIX or not pid.isdigit():
        return False
    return _starttime(int(pid)) != rest
