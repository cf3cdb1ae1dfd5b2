"""The state directory against another local user, and two masters on one directory.

Every test runs the real ``governor run`` with an embedded redis-server (the case where a
planted symlink in the directory turned into a write into a root-only file).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from governor.ops import control

from harness import wait_for

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="making a directory another user's needs root")


def _env(tmpdir: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("GOVERNOR_STATE_DIR", "RUNTIME_DIRECTORY", "STATE_DIRECTORY")}
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)  # tempfile.gettempdir(), so the default state_dir, lives there
    return env


def _sticky_tmp(tmp_path: Path) -> Path:
    """A directory like /tmp (world-writable, sticky), for TMPDIR: where the default state dir lives."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    tmp.chmod(0o1777)
    return tmp


def _config(tmp_path: Path, **top: object) -> Path:
    (tmp_path / "tasks.py").write_text(
        f"def touch(name):\n    open({str(tmp_path)!r} + '/' + name, 'w').close()\n")
    cfg = tmp_path / "g.yaml"
    cfg.write_text(yaml.safe_dump({"redis": {"url": "embedded"}, "app": {"path": ["."], "handlers": ["tasks:*"]},
                                   "queues": {"q": 1}, **top}))
    return cfg


def _run(cfg: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """A `governor run` expected to give up: before the fix it ran on, and the timeout fails the test."""
    return subprocess.run([sys.executable, "-m", "governor", "run", "-c", str(cfg)], capture_output=True,
                          text=True, timeout=10, env=env or _env(), cwd=cfg.parent)


def _start(cfg: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "governor", "run", "-c", str(cfg)],
                                stdout=out, stderr=subprocess.STDOUT, env=env or _env(), cwd=cfg.parent)


def _serving(state: Path, pid: int) -> bool:
    """The master `pid` answers on its control socket (a dead one's socket file may linger)."""
    try:
        return control.request(str(state), "status")["master"]["pid"] == pid
    except (OSError, ValueError):
        return False


def _enqueue(cfg: Path, name: str) -> None:
    out = subprocess.run([sys.executable, "-m", "governor", "enqueue", "-c", str(cfg), "q", "tasks:touch",
                          "--args", f'["{name}"]'], capture_output=True, text=True, timeout=30, env=_env())
    assert out.returncode == 0, out.stderr
    wait_for(lambda: (cfg.parent / name).exists(), 10, f"job {name} on the embedded Redis")


def _redis_servers(state: Path) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline", "status"])
            if "redis-server" in " ".join(p.info["cmdline"] or [])
            and str(state) in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE]


def _default_state_dir(cfg: Path, env: dict[str, str]) -> Path:
    """Where `governor run` would put it, as `governor check` reports it."""
    out = subprocess.run([sys.executable, "-m", "governor", "check", "-c", str(cfg)], capture_output=True,
                         text=True, timeout=30, env=env)
    assert out.returncode == 0, out.stderr
    return Path(yaml.safe_load(out.stdout)["state_dir"])


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_world_writable_state_dir_is_refused_and_nothing_is_written_in_it(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    out = _run(_config(tmp_path, state_dir=str(state)))
    assert out.returncode == 1, out.stderr
    assert f"governor: state_dir {state} is writable by group and others (mode 0777)" in out.stderr
    assert "chmod 700" in out.stderr
    assert list(state.iterdir()) == []


def test_a_symlink_in_place_of_the_state_dir_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "state"
    link.symlink_to(real)
    out = _run(_config(tmp_path), dict(_env(), GOVERNOR_STATE_DIR=str(link)))
    assert out.returncode == 1, out.stderr
    assert f"governor: state_dir {link} is a symlink (to {real})" in out.stderr
    assert list(real.iterdir()) == []


@as_root
def test_a_state_dir_owned_by_another_user_is_refused(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, NOBODY, NOBODY)
    out = _run(_config(tmp_path, state_dir=str(state)))
    assert out.returncode == 1, out.stderr
    assert (f"governor: state_dir {state} is owned by uid {NOBODY}, not by you (uid 0); "
            in out.stderr), out.stderr
    assert list(state.iterdir()) == []


@as_root
def test_a_squatted_default_state_dir_with_a_planted_log_symlink_is_refused(tmp_path):
    """The report: another user pre-creates /tmp/governor-0/<hash> world-writable and plants
    redis.log -> a root-only file; root's embedded redis-server wrote its log into that file."""
    tmp = _sticky_tmp(tmp_path)
    env = _env(tmp)
    app = tmp_path / "app"
    app.mkdir()
    cfg = _config(app)
    state = _default_state_dir(cfg, env)
    assert state.parent == tmp / "governor-0"
    secret = tmp_path / "shadow"
    secret.write_text("root:secret\n")
    secret.chmod(0o600)
    for d in (state.parent, state):  # what `nobody` can do in a sticky /tmp
        d.mkdir()
        d.chmod(0o777)
        os.chown(d, NOBODY, NOBODY)
    (state / "redis.log").symlink_to(secret)
    os.lchown(state / "redis.log", NOBODY, NOBODY)

    out = _run(cfg, env)
    assert out.returncode == 1, out.stderr
    assert (f"governor: state_dir {state}: {state.parent} above it is owned by uid {NOBODY}, "
            f"not by you (uid 0) or root; remove it or set state_dir" in out.stderr), out.stderr
    assert secret.read_text() == "root:secret\n" and secret.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in state.iterdir()) == ["redis.log"]
    assert _redis_servers(state) == []

    # the parent made ours again, the directory itself still squatted: refused as well
    os.chown(state.parent, 0, 0)
    state.parent.chmod(0o700)
    out = _run(cfg, env)
    assert out.returncode == 1 and f"state_dir {state} is owned by uid {NOBODY}" in out.stderr, out.stderr
    assert secret.read_text() == "root:secret\n"


def test_a_fresh_default_state_dir_is_made_0700_at_both_levels(tmp_path):
    tmp = _sticky_tmp(tmp_path)
    env = _env(tmp)
    cfg = _config(tmp_path)
    state = _default_state_dir(cfg, env)
    assert state.parent == tmp / f"governor-{os.getuid()}"
    master = _start(cfg, tmp_path / "master.log", env)
    try:
        wait_for(lambda: _serving(state, master.pid), 15, "the master")
        for d in (state.parent, state):
            st = d.lstat()
            assert (oct(st.st_mode & 0o7777), st.st_uid) == ("0o700", os.geteuid()), d
    finally:
        _stop(master)


def test_a_second_master_on_the_same_state_dir_exits_and_leaves_the_first_alone(tmp_path):
    state = tmp_path / "state"
    cfg = _config(tmp_path, state_dir=str(state))
    first = _start(cfg, tmp_path / "first.log")
    try:
        wait_for(lambda: _serving(state, first.pid), 15, "the first master")
        redis_before = [p.pid for p in _redis_servers(state)]
        t0 = time.monotonic()
        second = _run(cfg)
        assert second.returncode == 1, second.stderr
        assert time.monotonic() - t0 < 5
        assert (f"governor: another governor master (pid {first.pid}) is running with state_dir {state}; "
                f"stop it first" in second.stderr), second.stderr
        # the first one, its embedded Redis and its control socket are untouched, and it still works
        assert first.poll() is None
        assert [p.pid for p in _redis_servers(state)] == redis_before
        assert _serving(state, first.pid)
        _enqueue(cfg, "after-second")
        assert "embedded redis-server died" not in (tmp_path / "first.log").read_text()
    finally:
        _stop(first)
    assert first.returncode == 0


def test_the_lock_goes_with_its_master_even_a_sigkilled_one(tmp_path):
    state = tmp_path / "state"
    cfg = _config(tmp_path, state_dir=str(state))
    masters: list[subprocess.Popen] = []
    try:
        masters.append(first := _start(cfg, tmp_path / "first.log"))
        wait_for(lambda: _serving(state, first.pid), 15, "the first master")
        first.kill()  # its lock file stays behind, naming it
        first.wait()
        assert (state / "master.lock").read_text().strip() == str(first.pid)
        masters.append(second := _start(cfg, tmp_path / "second.log"))
        wait_for(lambda: _serving(state, second.pid), 15, "a master after a SIGKILLed one")
        _enqueue(cfg, "after-kill")
        _stop(second)
        assert second.returncode == 0
        masters.append(third := _start(cfg, tmp_path / "third.log"))
        wait_for(lambda: _serving(state, third.pid), 15, "a master after a stopped one")
        _stop(third)
        assert third.returncode == 0
    finally:
        for proc in masters:
            _stop(proc)


@as_root
def test_the_cli_sends_nothing_to_a_socket_planted_in_a_squatted_default_dir(tmp_path):
    """Another user's /tmp/governor-0/<hash> holding a fake redis.sock: `governor enqueue` run
    by root must not hand it the job (payloads can hold secrets), nor trust its control.sock."""
    import socket

    tmp = _sticky_tmp(tmp_path)
    env = _env(tmp)
    cfg = _config(tmp_path)
    state = _default_state_dir(cfg, env)
    for d in (state.parent, state):
        d.mkdir()
        os.chown(d, NOBODY, NOBODY)  # 0700 and not writable by others: but not root's
    fake = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fake.bind(str(state / "redis.sock"))
    fake.listen(4)
    fake.setblocking(False)
    try:
        out = subprocess.run([sys.executable, "-m", "governor", "enqueue", "-c", str(cfg), "q",
                              "tasks:touch", "--args", '["secret-payload"]'],
                             capture_output=True, text=True, timeout=20, env=env, cwd=tmp_path)
        assert out.returncode == 1, out.stderr
        assert f"{state} holds sockets but is not a state directory only you can write in" in out.stderr
        with pytest.raises(BlockingIOError):
            fake.accept()  # nobody connected
    finally:
        fake.close()
