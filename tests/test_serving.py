"""The metrics port and the control socket cannot hold the master's loop: idle, dribbling
and crowding clients leave /healthz, `governor status` and hard-timeout kills on time."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from governor.ops import control

from harness import APPS, free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent


def _healthz(port: int, timeout: float = 2.0) -> tuple[int, float]:
    """(status, seconds) of one GET /healthz over a fresh connection."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return int(data.split(b" ", 2)[1]), time.monotonic() - t0


def _idle_tcp(port: int, n: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]


def _idle_unix(path: str, n: int) -> list[socket.socket]:
    conns = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        conns.append(s)
    return conns


def _close_all(conns: list[socket.socket]) -> None:
    for s in conns:
        s.close()


def _closed_by_peer(s: socket.socket) -> bool:
    s.settimeout(0)
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True  # reset: closed too


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_idle_connections_do_not_delay_healthz(governor):
    port = free_port()
    governor.start({"w": {"concurrency": 1}}, metrics={"listen": f"127.0.0.1:{port}"})
    idle = _idle_tcp(port, 20)
    try:
        time.sleep(0.1)  # the master has seen them all
        for _ in range(8):
            status, seconds = _healthz(port)
            assert status == 200 and seconds < 0.2, (status, seconds)
            time.sleep(0.1)
        # and the server closes a connection that never asks anything, at its deadline
        wait_for(lambda: all(_closed_by_peer(s) for s in idle), 4, "the idle connections to be closed")
    finally:
        _close_all(idle)


def test_hard_kills_stay_on_time_among_idle_and_dribbling_clients(governor):
    port = free_port()
    governor.add_app("beating")
    governor.start({"t": {"concurrency": 1, "timeout": {"soft": "off", "hard": "500ms"}, "retry": {"max": 0}}},
                   metrics={"listen": f"127.0.0.1:{port}"},
                   app={"path": ["."], "handlers": ["tasks:*", "beating:*"]})
    control_path = str(governor.state_dir / "control.sock")
    stop, opened = threading.Event(), []

    def idle() -> None:
        while not stop.is_set():  # fresh silent clients on both servers, every half second
            opened.extend(_idle_tcp(port, 20) + _idle_unix(control_path, 10))
            stop.wait(0.5)

    def dribble() -> None:
        while not stop.is_set():
            with socket.create_connection(("127.0.0.1", port)) as s:
                for _ in range(20):
                    if stop.wait(0.05):
                        return
                    try:
                        s.send(b"G")
                    except OSError:
                        break

    threads = [threading.Thread(target=idle)] + [threading.Thread(target=dribble) for _ in range(5)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        # one after the other (concurrency 1): four kills, four chances for a client to be in the way
        beats = [governor.records / f"beat{i}" for i in range(4)]
        jobs = [governor.client.enqueue("t", "beating:beat", str(path), 30) for path in beats]
        records = wait_for(lambda: all((r := governor.client.job(j)) and r["state"] == "dead" for j in jobs)
                           and [governor.client.job(j) for j in jobs], 15, "the kills")
    finally:
        stop.set()
        for t in threads:
            t.join()
        _close_all(opened)
    assert all(r["reason"] == "timeout_hard" for r in records)
    # measured by the job itself, from its first heartbeat to its last (every 10 ms): the master's
    # own overshoot figure misses the time a blocked loop took to even hear that the job started
    ran = [float(p.read_text().split()[-1]) - float(p.read_text().split()[0]) for p in beats]
    assert all(0.45 < r < 0.5 + 0.3 for r in ran), ran


def test_more_clients_than_the_cap_keep_the_port_answering_and_the_fds_bounded(governor):
    port = free_port()
    governor.start({"w": {"concurrency": 1}}, metrics={"listen": f"127.0.0.1:{port}"})
    pid = governor.proc.pid
    before = _fds(pid)
    crowd = _idle_tcp(port, 150)  # the HTTP cap is 32
    crowd += _idle_unix(str(governor.state_dir / "control.sock"), 50)  # the control cap is 16
    try:
        peak = before
        for _ in range(5):
            status, seconds = _healthz(port)
            assert status == 200 and seconds < 0.2, (status, seconds)
            t0 = time.monotonic()
            assert governor.status()["master"]["pid"] == pid
            assert time.monotonic() - t0 < 0.2
            peak = max(peak, _fds(pid))
            time.sleep(0.1)
        assert peak <= before + 32 + 16 + 4, (before, peak)  # not one descriptor per client
        # the ones closed to make room were told so at once (EOF), not left hanging
        assert sum(_closed_by_peer(s) for s in crowd) >= 200 - 32 - 16 - 2
    finally:
        _close_all(crowd)


def test_idle_control_connections_do_not_delay_governor_status(governor):
    governor.start({"w": {"concurrency": 2}})
    idle = _idle_unix(str(governor.state_dir / "control.sock"), 20)
    try:
        time.sleep(0.1)
        for _ in range(5):
            t0 = time.monotonic()
            st = governor.status()
            assert time.monotonic() - t0 < 0.2
            assert len(st["pools"][0]["workers"]) == 2
        out = subprocess.run([sys.executable, "-m", "governor", "status", "-c", str(governor.config_path)],
                             capture_output=True, text=True, timeout=10, cwd=governor.dir)
        assert out.returncode == 0 and "w" in out.stdout, out.stdout + out.stderr
    finally:
        _close_all(idle)


def test_control_replies_one_json_document_to_one_line(governor):
    governor.start({"w": {"concurrency": 1}})
    path = str(governor.state_dir / "control.sock")
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        s.connect(path)
        s.sendall(b"sta")
        time.sleep(0.1)  # a command split across packets is still one command
        s.sendall(b"tus\n")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert json.loads(reply)["master"]["pid"] == governor.proc.pid
    assert control.request(str(governor.state_dir), "nope") == {"error": "unknown command 'nope'"}


def test_running_out_of_descriptors_does_not_spin_the_loop_and_accept_recovers():
    out = subprocess.run([sys.executable, str(APPS / "emfile.py")], capture_output=True, text=True,
                         timeout=20, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["starved_passes"] <= 10, result  # about 1 s / ACCEPT_PAUSE, not thousands
    assert result["answers"] == ["HTTP/1.0 200 OK"] * 3, result
    assert "not accepting connections" in out.stderr
