"""How a worker is named in Redis, so that a master can tell whether it still lives.

``host:pid:starttime``. The start time (clock ticks since boot, from
/proc/PID/stat) makes the name unique even when the kernel reuses the pid, so
a master restarted after a crash can look at its predecessor's leases and know
for certain which workers are gone, and requeue their jobs at once instead of
waiting for the leases to run out.
"""

from __future__ import annotations

import socket

HOST = socket.gethostname()


def _starttime(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()
    return fields[19].decode()  # field 22 of proc(5), counted after "pid (comm)"


def worker_id(pid: int) -> str:
    return f"{HOST}:{pid}:{_starttime(pid) or 0}"


def is_local_and_dead(wid: str) -> bool:
    """True only when ``wid`` names a process of this host that no longer exists."""
    host, _, rest = wid.rpartition(":")
    host, _, pid = host.rpartition(":")
    if host != HOST or not pid.isdigit():
        return False
    return _starttime(int(pid)) != rest
