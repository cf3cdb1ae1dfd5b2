"""What a worker says is untrusted: its job can write on the worker's channel to the master and
over the worker's own scoreboard page. The master drops what is malformed, replaces a worker
that lies, holds a worker that says it leaves to its word, and never dies of any of it; also
when the job runs as an unprivileged user and the master as root (issue 21, item 1)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from harness import Governor, wait_for


def _nobody_governor(redis_url: str) -> Iterator[Governor]:
    base = Path(tempfile.mkdtemp(prefix="governor-liar-"))
    base.chmod(0o755)
    g = Governor(base, redis_url)
    g.records.chmod(0o777)
    g.add_app("liars")  # app.handlers: tasks:*, liars:*
    try:
        yield g
    finally:
        g.stop()
        if not os.environ.get("KEEP"):
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def liar(redis_server) -> Iterator[Governor]:
    yield from _nobody_governor(redis_server.url)


def _start(g: Governor, queue: dict, user: str | None = None) -> None:
    g.start({"w": queue}, **({"user": user} if user else {}))


def _workers(g: Governor) -> list[psutil.Process]:
    """The master's worker processes (not its sentry)."""
    return g.children()


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="running jobs as nobody needs root")


@needs_root
@pytest.mark.parametrize("message", ['["exit"]', '["recycle"]', '["fatal"]', '["exit", "no-such"]',
                                     '["busy", 7]', 'not json', '{"exit": 1}'])
def test_a_malformed_message_from_a_job_does_not_kill_the_master(liar, message):
    g = liar
    _start(g, {"concurrency": 1, "retry": {"max": 0}}, user="nobody")
    first = g.workers("w")[0]["pid"]
    job = g.client.enqueue("w", "liars:say", "liar", message, 5.0)
    # the liar is replaced at once: its job (which would sleep 5 s) is charged with the lie
    wait_for(lambda: (g.client.job(job) or {}).get("state") == "dead", 10, "the lying job to be dead-lettered")
    record = g.client.job(job)
    assert "protocol_violation" in str(record), record
    g.assert_running()
    assert "Traceback" not in g.log()
    # the pool goes on with a new worker, and only one
    g.client.enqueue("w", "tasks:record", "after")
    wait_for(lambda: g.lines("done") == ["after"], 10, "the next job")
    assert first not in {w["pid"] for w in g.workers("w")}
    wait_for(lambda: len(_workers(g)) == 1, 10, "one worker for concurrency 1")
    assert psutil.Process(g.proc.pid).uids().real == 0


def test_a_job_that_says_its_worker_leaves_is_taken_at_its_word(liar):
    """A well-formed ["exit", "drain"] made the master spawn a replacement while the worker
    kept taking jobs (2-3 workers for concurrency 1): the worker now leaves after that job."""
    g = liar
    _start(g, {"concurrency": 1})
    g.client.enqueue("w", "liars:say", "liar", '["exit", "drain"]', 0.3)
    wait_for(lambda: g.lines("done") == ["liar"], 10, "the job that lied to finish")
    liar_pid = g.pairs("done")[0][1]
    g.client.enqueue_many("w", [{"handler": "tasks:sleep_then_record", "args": [f"n{i}", 0.05]}
                                for i in range(6)])
    seen: set[int] = set()
    deadline = time.monotonic() + 15
    while len(g.lines("done")) < 7 and time.monotonic() < deadline:
        workers = _workers(g)
        seen.add(len(workers))
        time.sleep(0.02)
    assert len(g.lines("done")) == 7
    assert max(seen) <= 2, seen  # the one that said it leaves and its replacement, never more
    assert liar_pid not in {p for _, p in g.pairs("done")[1:]}, "the worker took jobs after it said it leaves"
    wait_for(lambda: not psutil.pid_exists(liar_pid) or psutil.Process(liar_pid).status() == psutil.STATUS_ZOMBIE,
             10, "the worker that said it leaves to be gone")
    wait_for(lambda: len(_workers(g)) == 1, 10, "one worker for concurrency 1")
    g.assert_running()


@needs_root
@pytest.mark.parametrize("fill", [0xFE, 0xFF])
def test_a_job_that_scribbles_over_its_scoreboard_page_is_replaced_and_the_master_lives(liar, fill):
    """0xFF over the page made the reports' counters go negative: a Prometheus counter raised
    ValueError and the master exited. Now an impossible report (0xFE: negative counters, a
    start outside the worker's life) gets the worker replaced at once, and one that never
    reads whole (0xFF: its sequence number stays odd) after MAX_TORN."""
    g = liar
    _start(g, {"concurrency": 1, "retry": {"max": 0}}, user="nobody")
    first = g.workers("w")[0]["pid"]
    job = g.client.enqueue("w", "liars:scribble", "liar", fill)
    wait_for(lambda: first not in {w["pid"] for w in g.workers("w")}, 10, "the lying worker to be replaced")
    assert "broke the worker protocol" in g.log()
    if fill == 0xFE:  # caught while its job ran: the job is charged with it
        wait_for(lambda: (g.client.job(job) or {}).get("state") == "dead", 10, "the job to be dead-lettered")
        assert "protocol_violation" in str(g.client.job(job))
    g.assert_running()
    g.client.enqueue("w", "tasks:record", "after")
    wait_for(lambda: "after" in g.lines("done"), 10, "the next job")
    assert "Traceback" not in g.log()


def test_honest_workers_with_long_limits_are_not_taken_for_liars(governor):
    """The report checks bound a run's limits by what an honest worker can have: the queue's
    own (no cap in the config), a job's (up to a year) or a learnt one."""
    governor.start({"w": {"concurrency": 1, "timeout": {"soft": "300d", "hard": "400d"}}})
    c = governor.client
    ids = [c.enqueue("w", "tasks:sleep_then_record", "queue-limit", 0.3),
           c.enqueue("w", "tasks:sleep_then_record", "job-limit", 0.3, timeout="200d")]
    wait_for(lambda: all(c.job(i)["state"] == "done" for i in ids), 15, "both jobs to run")
    assert "broke the worker protocol" not in governor.log()
