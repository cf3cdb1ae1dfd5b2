"""redis+sentinel:// URLs: governor asks real Sentinels where the master is."""

from __future__ import annotations

import shutil

import pytest
import redis

from harness import Governor, RedisServer, Sentinel, wait_for


@pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")
def test_a_sentinel_url_finds_the_master(tmp_path):
    master = RedisServer(tmp_path / "master")
    master.start()
    sentinel = Sentinel(tmp_path, master)
    (tmp_path / "g").mkdir()
    g = Governor(tmp_path / "g", f"redis+sentinel://127.0.0.1:{sentinel.port}/mymaster/0")
    try:
        g.start({"w": {"concurrency": 1}})
        g.client.enqueue("w", "tasks:record", "via-sentinel")
        wait_for(lambda: g.lines("done") == ["via-sentinel"], 10, "a job through the sentinel-found master")
        # the job really is in the master Sentinel pointed to
        assert redis.Redis(port=master.port).exists(g.client.keys("w").meta)
    finally:
        g.stop()
        sentinel.stop()
        master.stop()
