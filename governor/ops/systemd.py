"""sd_notify without libsystemd: one datagram to $NOTIFY_SOCKET per state change.

Under systemd ``Type=notify`` this is how ``systemctl start`` knows the pools
are up and ``systemctl reload`` knows the new config is applied. Elsewhere
(supervisord, a terminal) NOTIFY_SOCKET is unset and every call is a no-op.
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    def __init__(self) -> None:
        addr = os.environ.get("NOTIFY_SOCKET", "")
        if addr.startswith("@"):
            addr = "\0" + addr[1:]  # abstract namespace
        self.addr = addr if addr.startswith(("/", "\0")) else ""
        self.sock: socket.socket | None = None
        if self.addr:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def notify(self, *lines: str) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendto("\n".join(lines).encode(), self.addr)
        except OSError:
            pass  # systemd gone or socket full: never worth failing the master over

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock else -1
