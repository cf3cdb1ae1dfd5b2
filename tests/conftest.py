"""Fixtures: a private redis-server per session, and a real `governor run` per test.

Nothing here is mocked. The Redis server is the real binary on a free loopback port; the
master is the real CLI in a subprocess, driven with real signals; handlers are the modules of
tests/apps/, copied to the test's temp directory, and they record what ran in files the test
reads back. The harness itself is the package tests/harness/; its names are re-exported here
for code that imports them from conftest.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from governor import Client

from fleet import Fleet
from harness import (  # noqa: F401  (re-exported: tests import these from conftest too)
    Governor,
    RedisServer,
    Sentinel,
    cli,
    free_port,
    http_get,
    reserve,
    wait_for,
)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def client(redis_server: RedisServer) -> Client:
    """A Client under a prefix of its own, so tests never see each other's keys."""
    return Client.from_url(redis_server.url, prefix=f"t{uuid.uuid4().hex[:10]}")


@pytest.fixture
def governor(tmp_path: Path, redis_server: RedisServer) -> Iterator[Governor]:
    g = Governor(tmp_path, redis_server.url)
    yield g
    g.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own (AOF on), for tests that stop, restart or reconfigure it."""
    server = RedisServer(tmp_path / "redis", "--appendonly", "yes", "--appendfsync", "always")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_governor(tmp_path: Path, private_redis: RedisServer) -> Iterator[Governor]:
    """A Governor (not yet started) on the test's own redis-server."""
    (tmp_path / "g").mkdir()
    g = Governor(tmp_path / "g", private_redis.url)
    yield g
    g.stop()


@pytest.fixture
def fleet(tmp_path: Path, private_redis: RedisServer) -> Iterator[Fleet]:
    """Masters (not yet started) on the test's own redis-server and one prefix (tests/fleet.py)."""
    f = Fleet(tmp_path, private_redis.url)
    yield f
    f.stop()
