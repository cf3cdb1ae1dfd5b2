"""redis+sentinel:// URLs: governor asks real Sentinels where the master is."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import Governor, RedisServer, free_port, wait_for


@pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")
def test_a_sentinel_url_finds_the_master(tmp_path):
    master = RedisServer(tmp_path / "master")
    master.start()
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                    f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n")
    sentinel = subprocess.Popen(["redis-server", str(conf), "--sentinel"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (tmp_path / "g").mkdir()
    g = Governor(tmp_path / "g", f"redis+sentinel://127.0.0.1:{port}/mymaster/0")
    try:
        import redis
        probe = redis.Redis(port=port)
        wait_for(lambda: _knows_master(probe), 10, "the sentinel to know the master")
        g.start({"w": {"concurrency": 1}})
        g.client.enqueue("w", "tasks:record", "via-sentinel")
        wait_for(lambda: g.lines("done") == ["via-sentinel"], 10, "a job through the sentinel-found master")
        # the job really is in the master Sentinel pointed to
        assert redis.Redis(port=master.port).exists(g.client.keys("w").meta)
    finally:
        g.stop()
        sentinel.terminate()
        sentinel.wait(10)
        master.stop()


def _knows_master(probe) -> bool:
    try:
        return bool(probe.execute_command("SENTINEL", "get-master-addr-by-name", "mymaster"))
    except Exception:  # noqa: BLE001 - starting up
        return False
