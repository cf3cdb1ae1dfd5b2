"""What a reload changes, decided without a master: unit tests of plan_reload."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

from governor.config import parse_config
from governor.supervise.reload import plan_reload

BASE: dict[str, Any] = {"redis": {"url": "redis://127.0.0.1:1/0"}, "app": {"handlers": ["x:*"]}}


def _cfg(queues: dict[str, Any], **top: Any) -> Any:
    return parse_config({**BASE, "queues": queues, **top}, os.devnull)


def _pools(cfg: Any, removed: tuple[str, ...] = ()) -> dict[str, Any]:
    return {q.name: SimpleNamespace(config=q, removed=q.name in removed) for q in cfg.queues.values()}


def test_queues_added_updated_and_removed():
    old = _cfg({"a": {"concurrency": 1}, "b": {"concurrency": 1}})
    new = _cfg({"a": {"concurrency": 3}, "c": {"concurrency": 2}})
    plan = plan_reload(old, new, _pools(old))
    assert plan.refused is None and plan.notes == ()
    assert [q.name for q in plan.add] == ["c"]
    assert [q.name for q in plan.update] == ["a"]
    assert plan.remove == ("b",)
    assert plan.config is new


def test_a_pool_already_draining_is_not_removed_twice():
    old = _cfg({"a": {"concurrency": 1}, "b": {"concurrency": 1}})
    new = _cfg({"a": {"concurrency": 1}})
    assert plan_reload(old, new, _pools(old, removed=("b",))).remove == ()


def test_a_change_of_partitions_is_refused():
    old = _cfg({"a": {"concurrency": 1, "partitions": 4}})
    new = _cfg({"a": {"concurrency": 1, "partitions": 8}})
    plan = plan_reload(old, new, _pools(old))
    assert plan.refused_queue == "a" and "partitions 4 -> 8" in plan.refused
    assert plan.config is old and plan.add == plan.update == plan.remove == ()


def test_partitions_are_compared_with_a_pool_still_draining():
    old = _cfg({"a": {"concurrency": 1, "partitions": 4}})
    unpartitioned = _cfg({"a": {"concurrency": 1}})
    plan = plan_reload(_cfg({"b": {"concurrency": 1}}), unpartitioned, _pools(old, removed=("a",)))
    assert plan.refused and "partitions 4 -> none" in plan.refused


def test_redis_and_state_dir_are_kept_until_a_restart():
    old = _cfg({"a": {"concurrency": 1}})
    new = _cfg({"a": {"concurrency": 1}}, redis={"url": "redis://:secret@10.0.0.1:6379/0"},
               state_dir="/tmp/elsewhere")
    plan = plan_reload(old, new, _pools(old))
    assert plan.config.redis == old.redis and plan.config.state_dir == old.state_dir
    assert plan.config.queues == new.queues
    assert len(plan.notes) == 1 and "127.0.0.1" in plan.notes[0] and "secret" not in plan.notes[0]


def test_a_preload_change_is_noted():
    old = _cfg({"a": {"concurrency": 1}})
    new = _cfg({"a": {"concurrency": 1}}, app={**BASE["app"], "preload": ["json"]}, lease="30s")
    plan = plan_reload(old, new, _pools(old))
    assert plan.notes == ("reload: app.preload changes take effect on restart",)
    assert plan.config is new
