"""sd_notify as systemd sees it: a real unix datagram socket in NOTIFY_SOCKET."""

from __future__ import annotations

import signal
import socket

import pytest


@pytest.fixture
def notify_socket(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    yield sock, str(path)
    sock.close()


def receive(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines())


def test_ready_reloading_stopping_in_order(governor, notify_socket):
    sock, path = notify_socket
    governor.start({"work": {"concurrency": 2}}, env={"NOTIFY_SOCKET": path})
    ready = receive(sock)
    assert ready["READY"] == "1" and "2 workers" in ready["STATUS"]
    governor.signal(signal.SIGHUP)
    reloading = receive(sock)
    assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
    assert receive(sock)["READY"] == "1"
    governor.signal(signal.SIGTERM)
    assert receive(sock)["STOPPING"] == "1"
    assert governor.wait_exit() == 0
