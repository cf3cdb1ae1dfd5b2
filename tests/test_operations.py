"""What operators touch: systemd's notify protocol and units, supervisord, metrics, health, logs."""

from __future__ import annotations

import configparser
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import free_port, http_get, wait_for

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def notify_socket(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    yield sock, str(path)
    sock.close()


def _messages(sock: socket.socket, until: str, limit: int = 200) -> list[dict[str, str]]:
    got = []
    for _ in range(limit):
        msg = dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())
        got.append(msg)
        if until in msg:
            return got
    raise AssertionError(f"no {until} in {got}")


def test_sd_notify_sequence_with_watchdog(governor, notify_socket):
    sock, path = notify_socket
    governor.start({"w": {"concurrency": 2}}, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    first = _messages(sock, "READY")
    assert len(first) == 1 and first[0]["READY"] == "1"  # nothing before READY
    assert "2 workers" in first[0]["STATUS"] and "jobs/s" in first[0]["STATUS"] and "waiting" in first[0]["STATUS"]
    t0 = time.monotonic()
    pings = [m for m in _messages(sock, "WATCHDOG") + _messages(sock, "WATCHDOG") if "WATCHDOG" in m]
    assert len(pings) == 2 and time.monotonic() - t0 < 1.0  # every 200 ms, half of WATCHDOG_USEC
    assert "STATUS" in pings[0]
    governor.signal(signal.SIGHUP)
    reload = [m for m in _messages(sock, "RELOADING") if "RELOADING" in m][0]
    assert int(reload["MONOTONIC_USEC"]) > 0
    after = [m for m in _messages(sock, "READY") if "READY" in m]
    assert after
    governor.signal(signal.SIGTERM)
    assert [m for m in _messages(sock, "STOPPING") if "STOPPING" in m]
    assert governor.wait_exit() == 0


def test_a_long_drain_extends_systemds_stop_timeout(governor, notify_socket):
    sock, path = notify_socket
    governor.start({"w": {"concurrency": 1}}, env={"NOTIFY_SOCKET": path}, shutdown_timeout="20s")
    _messages(sock, "READY")
    governor.client.enqueue("w", "tasks:sleep_then_record", "long", 2)
    wait_for(lambda: governor.lines("start"), 5, "the job to start")
    governor.signal(signal.SIGTERM)
    extend = [m for m in _messages(sock, "EXTEND_TIMEOUT_USEC") if "EXTEND_TIMEOUT_USEC" in m][0]
    assert 20e6 < int(extend["EXTEND_TIMEOUT_USEC"]) <= 31e6
    assert governor.wait_exit() == 0 and governor.lines("done") == ["long"]


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
@pytest.mark.parametrize("unit, instance", [("governor.service", "governor.service"),
                                            ("governor@.service", "governor@demo.service")])
def test_unit_files_pass_systemd_analyze_verify(tmp_path, unit, instance):
    exe = shutil.which("governor") or str(Path(sys.executable).parent / "governor")
    text = (ROOT / "systemd" / unit).read_text().replace("/usr/local/bin/governor", exe)
    (tmp_path / unit).write_text(text)
    if instance != unit:
        (tmp_path / instance).symlink_to(tmp_path / unit)
    out = subprocess.run(["systemd-analyze", "verify", instance], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for key in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "KillMode=mixed", "OOMPolicy=continue",
                "WatchdogSec=", "NoNewPrivileges=yes", "PrivateTmp=yes", "ProtectSystem="):
        assert key in text
    stop = int(text.split("TimeoutStopSec=")[1].split()[0])
    assert stop > 30  # longer than the example's shutdown_timeout


def test_supervisord_runs_the_shipped_program_drains_on_stop_and_reloads_on_hup(governor, tmp_path):
    shipped = configparser.RawConfigParser()
    shipped.read(ROOT / "etc" / "supervisord.conf")
    program = dict(shipped["program:governor"])
    assert program["stopsignal"] == "TERM" and program["stopasgroup"] == program["killasgroup"] == "true"
    assert int(program["stopwaitsecs"]) > 30
    program.update(command=f"{sys.executable} -m governor run -c {governor.config_path}",
                   stdout_logfile=str(governor.log_path), directory=str(governor.dir),
                   # what the harness gives a master it starts itself (the apps' records dir)
                   environment=",".join(f'{k}="{v}"' for k, v in governor.env.items()))
    program.pop("user", None)
    sockfile = tmp_path / "supervisor.sock"
    conf = tmp_path / "supervisord.conf"
    conf.write_text(
        f"[unix_http_server]\nfile={sockfile}\n[supervisord]\nlogfile={tmp_path}/supervisord.log\n"
        f"pidfile={tmp_path}/supervisord.pid\n"
        f"[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory=supervisor.rpcinterface:make_main_rpcinterface\n"
        f"[supervisorctl]\nserverurl=unix://{sockfile}\n[program:governor]\n"
        + "".join(f"{k}={v}\n" for k, v in program.items()))
    governor.write({"w": {"concurrency": 2}})
    bindir = Path(sys.executable).parent
    supervisord = subprocess.Popen([str(bindir / "supervisord"), "-n", "-c", str(conf)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def ctl(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(bindir / "supervisorctl"), "-c", str(conf), *args],
                              capture_output=True, text=True, timeout=90)

    try:
        wait_for(lambda: len(governor.workers("w", ("idle",))) == 2, 20, "governor under supervisord")
        governor.client.enqueue("w", "tasks:sleep_then_record", "drained", 3)
        wait_for(lambda: governor.lines("start"), 5, "the job to start")
        t0 = time.monotonic()
        out = ctl("stop", "governor")
        assert "stopped" in out.stdout, out.stdout + out.stderr
        assert governor.lines("done") == ["drained"]  # finished before supervisord saw the exit
        assert time.monotonic() - t0 >= 2
        assert governor.client.counts("w")["active"] == 0

        ctl("start", "governor")
        wait_for(lambda: len(governor.workers("w", ("idle",))) == 2, 20, "governor started again")
        governor.write({"w": {"concurrency": 4}})
        out = ctl("signal", "HUP", "governor")
        assert "signalled" in out.stdout, out.stdout + out.stderr
        governor.wait_workers("w", 4, timeout=5)
    finally:
        ctl("shutdown")
        try:
            supervisord.wait(30)
        except subprocess.TimeoutExpired:
            supervisord.kill()




def _scrape(url: str) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_metrics_move_with_work_and_stay_valid_under_frequent_scrapes(governor):
    port = free_port()
    governor.start({"m": {"concurrency": 2, "timeout": {"soft": "off", "hard": "300ms"}, "retry": {"max": 0}}},
                   metrics={"listen": f"127.0.0.1:{port}"})
    url = f"http://127.0.0.1:{port}/metrics"
    before = _scrape(url)
    assert before[("governor_workers", (("queue", "m"), ("state", "idle")))] == 2
    scrapes, errors, stop = [], [], threading.Event()

    def scraper():
        while not stop.is_set():
            try:
                scrapes.append(_scrape(url))
            except Exception as exc:  # noqa: BLE001 - any failure is the finding
                errors.append(repr(exc))
            time.sleep(0.05)

    t = threading.Thread(target=scraper)
    t.start()
    governor.client.enqueue_many("m", [{"handler": "tasks:record", "args": [f"j{i}"]} for i in range(300)])
    governor.client.enqueue_many("m", [{"handler": "tasks:sleep_then_record", "args": [f"s{i}", 0.05]}
                                       for i in range(60)])
    governor.client.enqueue("m", "tasks:fail", "x")
    stuck = governor.client.enqueue("m", "tasks:sleep_then_record", "stuck", 5)
    wait_for(lambda: len(governor.lines("done")) == 360 and governor.client.job(stuck)["state"] == "dead",
             20, "the work")
    stop.set()
    t.join()
    assert errors == [] and len(scrapes) >= 10
    ok = [s.get(("governor_jobs_total", (("outcome", "ok"), ("queue", "m"))), 0) for s in scrapes]
    assert ok == sorted(ok)  # a counter never goes down between scrapes
    after = _scrape(url)
    q = (("queue", "m"),)
    assert after[("governor_jobs_total", (("outcome", "ok"), ("queue", "m")))] == 360
    assert after[("governor_jobs_total", (("outcome", "exception"), ("queue", "m")))] == 1
    assert after[("governor_jobs_total", (("outcome", "timeout_hard"), ("queue", "m")))] == 1
    assert after[("governor_worker_exits_total", (("queue", "m"), ("reason", "timeout_hard")))] == 1
    assert after[("governor_job_duration_seconds_count", q)] == 362
    assert after[("governor_queue_wait_seconds_count", q)] == 362
    # depth gauges are as of the master's last pass over the queue (every second while busy)
    wait_for(lambda: _scrape(url)[("governor_queue_jobs", (("queue", "m"), ("state", "dead")))] == 2, 7,
             "the dead count in the depth gauge")
    assert _scrape(url)[("governor_queue_jobs", (("queue", "m"), ("state", "done")))] == 360
    assert ("governor_queue_oldest_waiting_age_seconds", q) in after
    assert ("governor_master_loop_lag_seconds", ()) in after
    assert after[("governor_redis_errors_total", ())] == 0
    assert any(name == "governor_worker_memory_bytes" and v > 1e6 for (name, _), v in after.items())


def test_oldest_waiting_age_reports_the_longest_wait(governor):
    port = free_port()
    governor.start({"m": {"concurrency": 0}}, metrics={"listen": f"127.0.0.1:{port}"})
    governor.client.enqueue("m", "tasks:record", "old", priority=90)
    time.sleep(1.5)
    governor.client.enqueue("m", "tasks:record", "new", priority=0)
    url = f"http://127.0.0.1:{port}/metrics"
    key = ("governor_queue_oldest_waiting_age_seconds", (("queue", "m"),))
    wait_for(lambda: _scrape(url)[("governor_queue_jobs", (("queue", "m"), ("state", "waiting")))] == 2, 20,
             "the master's pass to see both jobs (every 15 s over an idle queue)", interval=0.2)
    age = _scrape(url)[key]
    assert age >= 1.5  # the low-priority job at the back, not the new one at the head
    time.sleep(0.5)
    assert _scrape(url)[key] >= age + 0.4  # and it keeps growing between passes


def test_healthz_fails_when_redis_stays_away(private_redis, private_governor):
    g, server = private_governor, private_redis
    port = free_port()
    g.start({"w": {"concurrency": 1}}, metrics={"listen": f"127.0.0.1:{port}"}, health={"redis_grace": "1s"})
    health = f"http://127.0.0.1:{port}/healthz"
    assert http_get(health) == (200, b"ok\n")
    server.stop()
    wait_for(lambda: (r := http_get(health))[0] == 503 and b"redis unreachable" in r[1], 10, "/healthz to fail")
    server.start()
    wait_for(lambda: http_get(health)[0] == 200, 15, "/healthz to recover")
    samples = _scrape(f"http://127.0.0.1:{port}/metrics")
    assert samples[("governor_redis_errors_total", ())] >= 1


def test_json_logs_carry_worker_queue_job_and_reason(governor):
    governor.start({"w": {"concurrency": 1, "timeout": {"soft": "off", "hard": "300ms"}, "retry": {"max": 0}}},
                   log={"format": "json"})
    job = governor.client.enqueue("w", "tasks:sleep_then_record", "slow", 5)
    wait_for(lambda: governor.client.job(job)["state"] == "dead", 10, "the kill")
    time.sleep(0.2)
    entries = [json.loads(line) for line in governor.log().splitlines() if line.startswith("{")]
    assert entries and len(entries) == len([ln for ln in governor.log().splitlines() if ln.strip()])
    kill = [e for e in entries if e.get("reason") == "timeout_hard" and "worker" in e]
    assert kill and kill[0]["queue"] == "w"
    dead = [e for e in entries if e.get("job") == job]
    assert dead and dead[0]["reason"] == "timeout_hard"


def test_status_watch_refreshes_in_place(governor):
    governor.start({"w": {"concurrency": 1}})
    # (a test run started in the background by a shell without job control inherits SIGINT
    # ignored, and so would the CLI: Ctrl-C is what this checks, so it gets the default back)
    proc = subprocess.Popen([sys.executable, "-m", "governor", "status", "-c", str(governor.config_path),
                             "--watch", "--interval", "0.3"], stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(1.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=10)
    assert out.count("\x1b[H\x1b[2J") >= 2 and out.count("POOL") >= 2


def test_a_dribbling_http_client_cannot_hold_the_loop(governor):
    port = free_port()
    governor.start({"t": {"concurrency": 1, "timeout": {"soft": "off", "hard": "1s"}, "retry": {"max": 0}}},
                   metrics={"listen": f"127.0.0.1:{port}"})
    job = governor.client.enqueue("t", "tasks:sleep_then_record", "slow", 30)
    wait_for(lambda: governor.lines("start"), 5, "the job to start")
    stop = threading.Event()

    def dribble():
        while not stop.is_set():
            with socket.create_connection(("127.0.0.1", port)) as s:
                for _ in range(20):
                    if stop.is_set():
                        return
                    try:
                        s.send(b"G")
                    except OSError:
                        break
                    time.sleep(0.2)

    t = threading.Thread(target=dribble)
    t.start()
    try:
        record = wait_for(lambda: (r := governor.client.job(job)) and r["state"] == "dead" and r, 10, "the kill")
    finally:
        stop.set()
        t.join()
    assert record["errors"][0]["overshoot"] < 0.5, record["errors"][0]


def test_healthz_reports_a_stalled_loop_and_a_lasting_outage(private_redis, private_governor):
    g, server = private_governor, private_redis
    port = free_port()
    health = f"http://127.0.0.1:{port}/healthz"

    def code() -> int:
        return http_get(health)[0]

    g.start({"w": {"concurrency": 1}}, metrics={"listen": f"127.0.0.1:{port}"},
            health={"redis_grace": "1s", "max_loop_lag": "1s"})
    g.client.enqueue("w", "tasks:sleep_then_record", "busy", 30)  # busy: the loop has 0.5 s deadlines
    wait_for(lambda: g.lines("start"), 5, "the job to start")
    assert code() == 200
    g.signal(signal.SIGSTOP)
    time.sleep(2.5)
    g.signal(signal.SIGCONT)
    # the loop was late for its own deadlines (remembered 10 s; a loaded machine may take a
    # moment to schedule the master again)...
    wait_for(lambda: code() == 503, 3, "/healthz to report the stall", interval=0.1)
    wait_for(lambda: code() == 200, 15, "/healthz to forget the stall", interval=0.5)  # ...and is not now
    server.stop()
    wait_for(lambda: code() == 503, 10, "/healthz to fail")
    for _ in range(4):  # and it stays failed for as long as Redis is away: no flapping
        time.sleep(0.5)
        assert code() == 503
