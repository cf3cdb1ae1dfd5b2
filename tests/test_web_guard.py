"""The page's guards, over real sockets to a real master: DNS rebinding (the Host header), other
sites' forms (Origin), framing and caching headers, and a registry anyone can write."""

from __future__ import annotations

import socket
import time

import pytest

from harness import free_port, wait_for

TOKEN = "s3cret-token-0123456789"


def request(listen: str, path: str = "/", host: str | None = None, method: str = "GET", body: str = "",
            headers: dict[str, str] | None = None, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP/1.0 request (urllib cannot send another Host); (status, headers, body)."""
    addr, port = listen.rsplit(":", 1)
    lines = [f"{method} {path} HTTP/1.0"]
    if host is not None:
        lines.append(f"Host: {host}")
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if method == "POST":
        lines += ["Content-Type: application/x-www-form-urlencoded", f"Content-Length: {len(body)}"]
    with socket.create_connection((addr, int(port)), timeout=timeout) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n" + body).encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    first, *rest = head.decode("latin-1").split("\r\n")
    return int(first.split()[1]), {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in rest)}, payload


@pytest.fixture
def page(governor):
    listen = f"127.0.0.1:{free_port()}"
    governor.start({"work": {"concurrency": 1}}, metrics={"listen": listen},
                   web={"token": TOKEN, "hosts": ["governor.example.org"]})
    return governor, listen


def test_the_page_refuses_a_host_name_it_does_not_know(page):
    governor, listen = page
    port = listen.rsplit(":", 1)[1]
    for host in (listen, f"localhost:{port}", "governor.example.org", f"GOVERNOR.example.org.:{port}",
                 f"{socket.gethostname()}:{port}", f"[::1]:{port}", None):
        status, _, body = request(listen, host=host)
        assert status == 200 and b"<h1>governor</h1>" in body, (host, status, body[:200])
    for host in (f"attacker.example.com:{port}", "governor.example.org.attacker.com", "localhost.evil.com", ""):
        status, _, body = request(listen, host=host)
        assert status == 421 and b"web.hosts" in body and b"data-queue" not in body, (host, status, body)
        status, _, body = request(listen, "/action", host=host, method="POST",
                                  body=f"token={TOKEN}&op=pause&queue=work")
        assert status == 421, (host, status, body)
    assert not governor.client.paused("work")
    # /metrics and /healthz answer any name a scraper or a probe uses (they show no job data)
    assert request(listen, "/metrics", host="prometheus-target.svc:9100")[0] == 200
    assert request(listen, "/healthz", host="anything")[0] == 200


def test_the_page_is_neither_framed_nor_sniffed_nor_cached(page):
    _, listen = page
    for path in ("/", "/metrics", "/healthz"):
        _, headers, _ = request(listen, path, host=listen)
        assert headers["x-frame-options"] == "DENY", (path, headers)
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["cache-control"] == "no-store"


def test_an_action_from_another_sites_form_is_refused(page):
    governor, listen = page
    port = listen.rsplit(":", 1)[1]
    form = f"token={TOKEN}&op=pause&queue=work"
    for origin in ("http://attacker.example.com", f"http://127.0.0.1:{int(port) + 1}", f"https://{listen}",
                   "null"):
        status, _, body = request(listen, "/action", host=listen, method="POST", body=form,
                                  headers={"Origin": origin})
        assert status == 403 and b"Origin" in body, (origin, status, body)
    assert not governor.client.paused("work")
    status, _, body = request(listen, "/action", host=listen, method="POST", body=form,
                              headers={"Origin": f"http://{listen}"})
    assert status == 200, body
    assert governor.client.paused("work")


def test_the_page_shows_bad_registry_entries_as_such_and_the_rest_as_usual(governor):
    from test_status_untrusted import BAD_RECORDS, plant_record

    listen = f"127.0.0.1:{free_port()}"
    governor.start({"work": {"concurrency": 1}}, metrics={"listen": listen})
    c = governor.client
    c.enqueue("work", "tasks:record", "x", delay="1h")
    for i, bad in enumerate(BAD_RECORDS):
        plant_record(c, f"evil{i}", bad)
    c.redis.sadd(f"{c.prefix}:queues", b"\xff\xfebad", "wide", *[f"{i:02d}" + "n" * 1_000_000 for i in range(40)])
    c.redis.set(c.keys("wide").partitions_key, b"200000")
    started = time.monotonic()
    status, _, body = request(listen, host=listen)
    assert status == 200, body[:500]
    assert time.monotonic() - started < 5
    text = body.decode()
    assert "data-queue='work'" in text and f":{governor.proc.pid}" in text
    assert text.count("unreadable record") == len(BAD_RECORDS)
    assert "holds" in text and "not read: remove them" in text  # (40 MB of names: not read at all)
    assert len(body) < 200_000, len(body)  # 40 names of 1 MB are not 80 MB of page
    c.redis.srem(f"{c.prefix}:queues", *[f"{i:02d}" + "n" * 1_000_000 for i in range(40)])
    wait_for(lambda: "\\xff\\xfebad" in request(listen, host=listen)[2].decode(), 5,
             "the undecodable name shown once the registry can be read")
    assert "not from 1 to 1024" in request(listen, host=listen)[2].decode()
    assert governor.proc.poll() is None
    # and the job operations for the other queues are unharmed
    status, _, body = request(listen, "/healthz", host=listen)
    assert status == 200
    assert c.jobs("work", "delayed")[0]
    wait_for(lambda: request(listen, host=listen)[0] == 200, 5, "the page again")


def test_web_hosts_are_checked_where_they_are_read(tmp_path):
    import yaml

    from governor.config import ConfigError, load_config

    path = tmp_path / "g.yaml"
    for bad in (["http://governor.example.org"], ["governor.example.org:9808"], ["*.example.org"], [7], "a b"):
        path.write_text(yaml.safe_dump({"queues": {"q": {"concurrency": 1}}, "web": {"hosts": bad}}))
        with pytest.raises(ConfigError, match=r"web\.hosts"):
            load_config(str(path))
    path.write_text(yaml.safe_dump({"queues": {"q": {"concurrency": 1}}, "web": {"hosts": ["Gov.Example.org."]}}))
    assert load_config(str(path)).web.hosts == ("gov.example.org",)


def test_a_view_of_a_1024_partition_queue_is_gathered_in_bounded_steps(client):
    """The loop takes one step per pass: no step may hold it for the whole queue."""
    from governor.ops.webview import STEP_LANES, ViewBuilder

    client.redis.sadd(f"{client.prefix}:queues", "wide", "plain")
    client.redis.set(client.keys("wide").partitions_key, 1024)
    client.enqueue("plain", "tasks:record", "x")
    builder = ViewBuilder(client, list, dict, ("me", lambda: {"master": {"host": "h", "pid": 1}, "pools": []}))

    def processed() -> int:
        return int(client.redis.info("stats")["total_commands_processed"])

    builder.start()
    steps, most = 0, 0
    while builder.building:
        before = processed()
        builder.step()
        most = max(most, processed() - before - 1)  # (less the INFO itself)
        steps += 1
    assert builder.failed is None
    view = builder.view[1]
    assert view["queues"]["wide"]["partitions"]["count"] == 1024 and view["queues"]["plain"]["waiting"] == 1
    assert steps >= 1024 // STEP_LANES and most <= STEP_LANES * 8, (steps, most)
