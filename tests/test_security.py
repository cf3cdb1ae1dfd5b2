"""Authentication, TLS, privilege drop, and secrets kept out of logs and status."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import redis
import yaml

from conftest import Governor, RedisServer, free_port, wait_for


def _status_json(g: Governor) -> str:
    out = subprocess.run([sys.executable, "-m", "governor", "status", "-c", str(g.config_path), "--json"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _run_one_job(g: Governor) -> None:
    g.start({"w": {"concurrency": 1}})
    g.client.enqueue("w", "tasks:record", "authed")
    wait_for(lambda: g.lines("done") == ["authed"], 10, "a job through the authenticated connection")


def test_password_in_the_url_works_and_never_shows(tmp_path):
    server = RedisServer(tmp_path / "redis", "--requirepass", "s3cret-pw")
    server.start()
    url = f"redis://:s3cret-pw@127.0.0.1:{server.port}/0"
    (tmp_path / "g").mkdir()
    g = Governor(tmp_path / "g", url)
    try:
        _run_one_job(g)
        status = _status_json(g)
        assert json.loads(status)["master"]["redis"].startswith("redis://:***@")
        assert "s3cret-pw" not in status and "s3cret-pw" not in g.log()
        check = subprocess.run([sys.executable, "-m", "governor", "check", "-c", str(g.config_path)],
                               capture_output=True, text=True)
        assert "s3cret-pw" not in check.stdout
    finally:
        g.stop()
        server.stop()


def test_acl_user_in_the_url(tmp_path):
    server = RedisServer(tmp_path / "redis")
    server.start()
    admin = redis.Redis(port=server.port)
    admin.acl_setuser("governor", enabled=True, passwords=["+acl-pw"], keys=["*"], channels=["*"],
                      commands=["+@all"])
    admin.acl_setuser("default", enabled=False)
    (tmp_path / "g").mkdir()
    g = Governor(tmp_path / "g", f"redis://governor:acl-pw@127.0.0.1:{server.port}/0")
    try:
        _run_one_job(g)
        assert "acl-pw" not in g.log() and "acl-pw" not in _status_json(g)
    finally:
        g.stop()
        server.stop()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl CLI needed to make a test CA")
def test_tls_with_a_self_signed_ca_and_client_certificates(tmp_path):
    d = tmp_path / "pki"
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "1", "-subj", "/CN=governor-test-ca", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "1", "-extfile", "san.ext", cwd=d)
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--tls-cert-file", str(d / "server.crt"), "--tls-key-file", str(d / "server.key"),
         "--tls-ca-cert-file", str(d / "ca.crt"), "--tls-auth-clients", "yes"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (tmp_path / "g").mkdir()
    g = Governor(tmp_path / "g", f"rediss://127.0.0.1:{port}/0")
    tls = {"ca": str(d / "ca.crt"), "cert": str(d / "client.crt"), "key": str(d / "client.key")}
    try:
        probe = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=tls["ca"],
                            ssl_certfile=tls["cert"], ssl_keyfile=tls["key"])
        wait_for(lambda: _tls_up(probe), 10, "the TLS redis-server")
        from governor import Client
        from governor.config import TlsConfig
        g.client = Client.from_url(g.redis_url, prefix=g.prefix, tls=TlsConfig(**tls))
        cfg = g.config({"w": {"concurrency": 1}})
        cfg["redis"]["tls"] = tls
        g.config_path.write_text(yaml.safe_dump(cfg))
        g.start()
        g.client.enqueue("w", "tasks:record", "over-tls")
        wait_for(lambda: g.lines("done") == ["over-tls"], 10, "a job over TLS")
        # and without the client certificate the server refuses us: TLS is really in force
        with pytest.raises(redis.ConnectionError):
            redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=tls["ca"]).ping()
    finally:
        g.stop()
        proc.terminate()
        proc.wait(10)


def _tls_up(client: redis.Redis) -> bool:
    try:
        return client.ping()
    except redis.ConnectionError:
        return False


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_workers_run_as_nobody_and_still_work(redis_server):
    nobody = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="governor-nobody-"))
    try:
        base.chmod(0o755)
        g = Governor(base, redis_server.url)
        g.records.chmod(0o777)
        (base / "whoami.py").write_text(
            "import os\n\ndef whoami():\n"
            f"    open({str(g.records / 'uid')!r}, 'w').write(str(os.getuid()) + ' ' + str(os.getgid()))\n")
        cfg = g.config({"w": {"concurrency": 1}}, user="nobody")
        cfg["app"]["handlers"] = ["tasks:*", "whoami:*"]
        g.config_path.write_text(yaml.safe_dump(cfg))
        g.start()
        g.client.enqueue("w", "whoami:whoami")
        wait_for(lambda: (g.records / "uid").exists(), 10, "the job to run as nobody")
        uid, gid = map(int, (g.records / "uid").read_text().split())
        assert (uid, gid) == (nobody.pw_uid, nobody.pw_gid)
        worker = g.workers("w")[0]["pid"]
        import psutil
        assert psutil.Process(worker).uids().real == nobody.pw_uid
        assert psutil.Process(g.proc.pid).uids().real == 0  # the master keeps its rights
        # PDEATHSIG survives the switch: the worker still dies with its master
        g.proc.kill()
        g.wait_exit()
        gone, alive = psutil.wait_procs([psutil.Process(worker)], timeout=3)
        assert not alive
    finally:
        g.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_a_user_that_does_not_exist_is_a_config_error(governor):
    governor.write({"w": {"concurrency": 1, "user": "no-such-user-xyz"}})
    out = subprocess.run([sys.executable, "-m", "governor", "check", "-c", str(governor.config_path)],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "queues.w.user: no such user 'no-such-user-xyz'" in out.stderr
