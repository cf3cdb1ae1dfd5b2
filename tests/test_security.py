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

from harness import Governor, RedisServer, Sentinel, cli, free_port, wait_for


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


# --------------------------------------------------------------------------
# Every spelling of a password in redis.url stays out of check, the log and status

from governor import redisurl  # noqa: E402
from governor.config import ConfigError, mask_url, parse_config  # noqa: E402


def _shown_everywhere_but_the_secret(g: Governor, secrets: tuple[str, ...]) -> str:
    """check, status and status --json output (and the log so far), asserting no secret in them."""
    check = cli("check", "-c", str(g.config_path))
    assert check.returncode == 0, check.stderr
    status = cli("status", "-c", str(g.config_path))
    status_json = cli("status", "-c", str(g.config_path), "--json")
    seen = "\n".join((check.stdout, check.stderr, status.stdout, status.stderr, status_json.stdout,
                      status_json.stderr, g.log() if g.log_path.exists() else ""))
    for secret in secrets:
        assert secret not in seen, f"{secret!r} leaked"
    return seen


# (URL template, the password the server wants, fragments of it that must never show)
PASSWORD_SPELLINGS = [
    ("redis://:p@ss-Xy7@127.0.0.1:{port}/0", "p@ss-Xy7", ("p@ss-Xy7", "ss-Xy7")),
    ("redis://default:s3cr%40t-Q9@127.0.0.1:{port}/0", "s3cr@t-Q9", ("s3cr", "t-Q9")),
    ("redis://127.0.0.1:{port}/0?password=qs-secret-K2", "qs-secret-K2", ("qs-secret-K2",)),
]


@pytest.mark.parametrize("template, password, secrets", PASSWORD_SPELLINGS,
                         ids=["at-in-password", "percent-escaped", "query-parameter"])
def test_every_password_spelling_connects_and_never_shows(tmp_path, template, password, secrets):
    server = RedisServer(tmp_path / "redis", "--requirepass", password)
    server.start()
    (tmp_path / "g").mkdir()
    g = Governor(tmp_path / "g", template.format(port=server.port))
    try:
        _run_one_job(g)  # the master and its worker really authenticated with that password
        seen = _shown_everywhere_but_the_secret(g, secrets)
        assert "***" in seen and f"127.0.0.1:{server.port}" in seen  # masked, not dropped
        assert json.loads(_status_json(g))["master"]["redis"] == redisurl.mask(g.redis_url)
    finally:
        g.stop()
        server.stop()
    for secret in secrets:
        assert secret not in g.log()


@pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")
def test_a_sentinel_secret_at_host_password_connects_and_never_shows(tmp_path):
    master = RedisServer(tmp_path / "master", "--requirepass", "sentinel-pw-Z4")
    master.start()
    sentinel = Sentinel(tmp_path, master, auth_pass="sentinel-pw-Z4")
    port = sentinel.port
    (tmp_path / "g").mkdir()
    g = Governor(tmp_path / "g", f"redis+sentinel://sentinel-pw-Z4@127.0.0.1:{port}/mymaster")
    try:
        _run_one_job(g)
        seen = _shown_everywhere_but_the_secret(g, ("sentinel-pw-Z4",))
        assert f"redis+sentinel://:***@127.0.0.1:{port}/mymaster" in seen
    finally:
        g.stop()
        sentinel.stop()
        master.stop()
    assert "sentinel-pw-Z4" not in g.log()


@pytest.mark.parametrize("url", [
    "redis+sentinel://sentinel-pw-Z4@127.0.0.1:{port}/mymaster",
    "redis+sentinel://app:sentinel-pw-Z4@127.0.0.1:{port},127.0.0.1:{port}/mymaster/0",
    "redis+sentinel://127.0.0.1:{port}/mymaster/0?password=sentinel-pw-Z4",
])
def test_sentinel_passwords_stay_out_of_check_without_a_sentinel(tmp_path, url):
    g = Governor(tmp_path, url.format(port=free_port()))  # nothing listens there
    g.write({"w": {"concurrency": 1}})
    check = cli("check", "-c", str(g.config_path))
    assert check.returncode == 0, check.stderr
    assert "sentinel-pw-Z4" not in check.stdout + check.stderr
    assert ":***@" in check.stdout or "password=***" in check.stdout


# (url, auth username, auth password, hosts, db, service, masked)
PARSE_CASES = [
    ("redis://127.0.0.1:6379/0", None, None, (("127.0.0.1", 6379),), 0, None,
     "redis://127.0.0.1:6379/0"),
    ("redis://:p@ss@h:1/2", None, "p@ss", (("h", 1),), 2, None, "redis://:***@h:1/2"),
    ("redis://u:a:b@c@h", "u", "a:b@c", (("h", None),), None, None, "redis://u:***@h"),
    ("redis://default:s3cr%40t@h/0", "default", "s3cr@t", (("h", None),), 0, None,
     "redis://default:***@h/0"),
    ("rediss://h:6380/0?password=x&ssl_cert_reqs=none", None, "x", (("h", 6380),), 0, None,
     "rediss://h:6380/0?password=***&ssl_cert_reqs=none"),
    ("redis://h/0?PassWord=x", None, None, (("h", None),), 0, None, "redis://h/0?PassWord=***"),
    ("redis://h/0?password=a@b", None, "a@b", (("h", None),), 0, None, "redis://h/0?password=***"),
    ("redis://user@h/3", "user", None, (("h", None),), 3, None, "redis://user@h/3"),
    ("redis://[::1]:7000/1?db=4", None, None, (("::1", 7000),), 4, None, "redis://[::1]:7000/1?db=4"),
    ("unix://:pw@/run/redis.sock?db=2", None, "pw", (), 2, None, "unix://:***@/run/redis.sock?db=2"),
    ("unix:///run/redis.sock", None, None, (), None, None, "unix:///run/redis.sock"),
    ("redis+sentinel://secret@s1/mymaster", None, "secret", (("s1", None),), None, "mymaster",
     "redis+sentinel://:***@s1/mymaster"),
    ("redis+sentinel://u:p%2Fw@s1:1,s2:2/m/3", "u", "p/w", (("s1", 1), ("s2", 2)), 3, "m",
     "redis+sentinel://u:***@s1:1,s2:2/m/3"),
    ("redis+sentinel://s1/m?password=pw&db=5", None, "pw", (("s1", None),), 5, "m",
     "redis+sentinel://s1/m?password=***&db=5"),
]


@pytest.mark.parametrize("url, username, password, hosts, db, service, masked", PARSE_CASES)
def test_redis_urls_parse_and_mask(url, username, password, hosts, db, service, masked):
    parsed = redisurl.parse(url)
    assert (parsed.auth_username, parsed.auth_password, parsed.hosts, parsed.db, parsed.service) == \
        (username, password, hosts, db, service)
    assert parsed.masked() == masked == mask_url(url)
    assert redisurl.parse(masked).masked() == masked  # the masked form reads the same way


@pytest.mark.parametrize("url", [u for u, *_ in PARSE_CASES if not u.startswith("redis+sentinel")])
def test_the_parse_agrees_with_what_redis_py_connects_to(url):
    from redis.connection import parse_url

    theirs = parse_url(url)
    ours = redisurl.parse(url)
    assert theirs.get("username") == ours.auth_username
    assert theirs.get("password") == ours.auth_password
    assert theirs.get("db") == ours.db
    if ours.hosts:
        assert (theirs.get("host"), theirs.get("port")) == ours.hosts[0]


@pytest.mark.parametrize("url, secret", [
    ("redis://:pa/ss@h/0", "pa/ss"),  # raw '/': redis-py would raise quoting "pa"
    ("redis://u:pa?ss@h/0", "pa?ss"),
    ("redis://:pa#ss@h/0", "pa#ss"),
    ("redis://sec/ret@h", "sec/ret"),
    ("redis://u?a=b@h/0", "u?a=b"),
    ("redis+sentinel://h/m/0?password=x#y-secret", "y-secret"),
    ("redis+sentinel://pw@h", "pw@"),  # no service
    ("http://u:http-secret@h", "http-secret"),
])
def test_unusable_urls_are_refused_without_quoting_the_secret(url, secret):
    with pytest.raises(redisurl.RedisURLError) as info:
        redisurl.parse(url)
    assert secret not in str(info.value)
    with pytest.raises(ConfigError) as info:
        parse_config({"redis": {"url": url}, "queues": {"a": 1}})
    assert "redis.url: " in str(info.value) and secret not in str(info.value)
    for part in (secret, *secret.split("/"), *secret.split("?"), *secret.split("#")):
        if len(part) > 2:
            assert part not in mask_url(url)
