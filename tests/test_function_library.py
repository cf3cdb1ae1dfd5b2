"""governor's Lua as one Redis Function library: loaded by the master, called with FCALL by
every party, loaded again when a node lost it, and the same code run as scripts where Redis
has no functions (Redis < 7, simulated here by renaming FCALL and FUNCTION away) or where the
documented switch (GOVERNOR_SCRIPTS=1) asks for it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import redis

from governor import Client
from governor.protocol.library import LIBRARY, function_name

from harness import Governor, RedisServer, wait_for

TESTS = Path(__file__).parent


def calls(admin: redis.Redis) -> dict[str, int]:
    stats = admin.info("commandstats")
    return {name: stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("fcall", "evalsha", "eval")}


def done(g: Governor, ids: list[str]) -> bool:
    return all((r := g.client.job(i, "w")) and r["state"] == "done" for i in ids)


def test_a_master_loads_the_library_and_every_call_is_an_fcall(private_redis, private_governor):
    admin = redis.Redis(port=private_redis.port)
    g = private_governor.start({"w": {"concurrency": 2}})
    libraries = [dict(zip(entry[::2], entry[1::2], strict=True))[b"library_name"] for entry in admin.function_list()]
    assert LIBRARY.encode() in libraries
    ids = [g.client.enqueue("w", "tasks:record", f"j{i}") for i in range(20)]
    wait_for(lambda: done(g, ids), 15, "20 jobs done")
    seen = calls(admin)
    assert seen["fcall"] >= 20 and seen["evalsha"] == 0 and seen["eval"] == 0, seen


def test_a_node_that_lost_the_library_gets_it_again_and_nothing_is_lost(private_redis, private_governor):
    admin = redis.Redis(port=private_redis.port)
    g = private_governor.start({"w": {"concurrency": 2}})
    first = [g.client.enqueue("w", "tasks:record", f"a{i}") for i in range(5)]
    wait_for(lambda: done(g, first), 15, "the first jobs done")
    admin.function_flush()  # as a restarted node without persistence, or a new primary, has none
    producer = Client.from_url(private_redis.url, prefix=g.prefix)
    second = [producer.enqueue("w", "tasks:record", f"b{i}") for i in range(5)]
    wait_for(lambda: done(g, second), 15, "the jobs enqueued after the flush done")
    assert admin.function_list(library=LIBRARY)
    assert sorted(g.records.joinpath("done").read_text().split()[::2]) == sorted(
        [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)])


def test_without_functions_the_same_code_runs_as_scripts(tmp_path):
    old = RedisServer(tmp_path / "redis", "--rename-command", "FCALL", "", "--rename-command", "FUNCTION", "")
    old.start()
    try:
        (tmp_path / "g").mkdir()
        g = Governor(tmp_path / "g", old.url).start({"w": {"concurrency": 2}})
        try:
            # a bulk enqueue first (one transaction of several calls), then single ones
            fresh = Client.from_url(old.url, prefix=g.prefix)
            ids = fresh.enqueue_many("w", [{"handler": "tasks:record", "args": [f"m{i}"]} for i in range(5000)])
            ids = [g.client.enqueue("w", "tasks:record", f"j{i}") for i in range(10)] + ids
            wait_for(lambda: done(g, ids[:10]) and g.client.counts("w")["done"] == len(ids), 30, "every job done")
            seen = calls(redis.Redis(port=old.port))
            assert seen["evalsha"] >= 10 and seen["fcall"] == 0, seen
        finally:
            g.stop()
    finally:
        old.stop()


def test_the_switch_forces_scripts_on_a_redis_that_has_functions(private_redis, private_governor):
    admin = redis.Redis(port=private_redis.port)
    g = private_governor.start({"w": {"concurrency": 1}}, env={"GOVERNOR_SCRIPTS": "1"})
    env = dict(os.environ, GOVERNOR_SCRIPTS="1")
    # a producer process of its own, under the switch too
    code = (f"from governor import Client; c = Client.from_url({private_redis.url!r}, prefix={g.prefix!r}); "
            "print(','.join(c.enqueue('w', 'tasks:record', f'j{i}') for i in range(5)))")
    ids = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.strip().split(",")
    wait_for(lambda: done(g, ids), 15, "5 jobs done")
    seen = calls(admin)
    assert seen["fcall"] == 0 and seen["evalsha"] >= 5, seen
    assert not admin.function_list(library=LIBRARY)  # nobody loaded it


def test_the_protocol_tests_pass_in_script_mode():
    """The core protocol suites again, every call an EVALSHA (the library is never loaded)."""
    env = dict(os.environ, GOVERNOR_SCRIPTS="1")
    suites = ["test_protocol.py", "test_settle_reserve.py", "test_flight_protocol.py"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                           *(str(TESTS / s) for s in suites)], env=env, cwd=TESTS.parent,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout


def test_function_names_carry_the_protocol_version():
    assert function_name("enqueue").startswith(LIBRARY + "_") and LIBRARY.startswith("governor_v")
