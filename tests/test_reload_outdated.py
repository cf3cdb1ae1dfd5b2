"""A reload replaces every worker forked with a setting that changed, whatever the setting
(issue 21, item 17): a queue switched to ``user: nobody`` kept running jobs as root until its
workers recycled, and so did changes of group, the payload and result limits,
shutdown_timeout and the named limiters. What makes a worker outdated is now derived from
everything it is forked with; what only sizes the pool replaces nobody."""

from __future__ import annotations

import os
import pwd
import signal
from typing import Any

import psutil
import pytest
import yaml

from governor.config import parse_config
from governor.supervise.forkspec import outdating_key
from governor.supervise.worker import WorkerSpec

from harness import wait_for


def _user(cfg: dict[str, Any]) -> None:
    cfg["queues"]["w"]["user"] = "nobody"


def _max_payload(cfg: dict[str, Any]) -> None:
    cfg["limits"] = {"max_payload": "2MiB"}


def _max_result(cfg: dict[str, Any]) -> None:
    cfg["limits"] = {"max_result": "1MiB"}


def _shutdown_timeout(cfg: dict[str, Any]) -> None:
    cfg["shutdown_timeout"] = "11s"


def _limiters(cfg: dict[str, Any]) -> None:
    cfg["limiters"] = {"stripe": [{"limit": 5, "per": "1s"}]}


@pytest.mark.parametrize("change", [_user, _max_payload, _max_result, _shutdown_timeout, _limiters],
                         ids=lambda f: f.__name__.strip("_"))
def test_a_reload_replaces_the_workers_forked_with_the_old_value(governor, change):
    if change is _user and os.geteuid() != 0:
        pytest.skip("running a queue as nobody needs root")
    governor.start({"w": {"concurrency": 1}})
    old = governor.workers("w")[0]["pid"]
    cfg = yaml.safe_load(governor.config_path.read_text())
    change(cfg)
    governor.config_path.write_text(yaml.safe_dump(cfg))
    governor.signal(signal.SIGHUP)
    new = wait_for(lambda: [w["pid"] for w in governor.workers("w", states=("idle",)) if w["pid"] != old],
                   15, "the worker to be replaced")
    wait_for(lambda: old not in [w["pid"] for w in governor.workers("w", states=("starting", "idle", "busy",
                                                                                   "draining"))],
             15, "the old worker to be gone")
    if change is _user:
        assert psutil.Process(new[0]).uids().real == pwd.getpwnam("nobody").pw_uid
    governor.assert_running()


def test_what_only_sizes_the_pool_outdates_no_worker(tmp_path):
    base = {"redis": {"url": "redis://127.0.0.1:1/0"}, "app": {"handlers": ["x:*"]},
            "queues": {"w": {"concurrency": 2}}}
    a = parse_config(base, str(tmp_path / "a.yaml"))
    grown = parse_config({**base, "queues": {"w": {"concurrency": {"min": 1, "max": 9}}}}, str(tmp_path / "a.yaml"))
    other = parse_config({**base, "queues": {"w": {"concurrency": 2, "user": "nobody"}}}, str(tmp_path / "a.yaml"))

    def key(cfg: Any, **per_worker: Any) -> Any:
        q = cfg.queues["w"]
        spec = WorkerSpec(queue=q, app=cfg.app, redis_url="redis://x", prefix=cfg.redis.prefix,
                          lease=cfg.lease, user=q.user or cfg.user, shutdown_timeout=cfg.shutdown_timeout,
                          **{"index": 0, "master_pid": 0, **per_worker})
        return outdating_key(spec)

    assert key(a) == key(a, index=3, slot=7, max_jobs=900, master_pid=42)  # a worker's own
    assert key(a) == key(grown)  # the pool's size
    assert key(a) != key(other)  # a setting the worker runs with
