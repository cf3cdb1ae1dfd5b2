"""The workers' scoreboard reports: written by a real forked child while the parent reads,
never seen torn; counters that only grow."""

from __future__ import annotations

import os
import time

from governor.supervise.scoreboard import OUTCOMES, Scoreboard


def test_a_report_is_never_read_half_written():
    """A child rewrites its report as fast as it can (run n always with id job-n, token t-n);
    the parent, reading meanwhile, must only ever see a run number with its own id and token."""
    board = Scoreboard(4, buckets=(0.01, 0.1, 1.0))
    slot = board.allocate()
    pid = os.fork()
    if pid == 0:  # the worker
        try:
            for n in range(1, 20001):
                board.start_run(slot, n, f"job-{n}", f"t-{n}", "m:f", 1, None, 5.0, None, 0.002)
                board.finish_run(slot, "ok" if n % 2 else "exception", 0.05)
        finally:
            os._exit(0)
    seen = 0
    try:
        while True:
            r = board.report(slot)
            if r is not None and r.run:
                assert (r.job_id, r.token) == (f"job-{r.run}", f"t-{r.run}"), r
                seen += 1
            done = os.waitpid(pid, os.WNOHANG)[0]
            if done:
                break
    finally:
        if not done:
            os.waitpid(pid, 0)
    final = board.report(slot)
    assert final.run == 0 and final.finished == 20000
    counts = dict(zip(OUTCOMES, final.counts[:len(OUTCOMES)], strict=False))
    assert counts["ok"] == counts["exception"] == 10000
    run_buckets = final.counts[len(OUTCOMES):len(OUTCOMES) + 4]
    wait_buckets = final.counts[len(OUTCOMES) + 4:]
    assert run_buckets == (0, 20000, 0, 0) and wait_buckets == (20000, 0, 0, 0)
    assert abs(final.run_seconds - 1000.0) < 1e-6
    assert seen > 0


def test_a_reused_slot_starts_from_zero():
    board = Scoreboard(2, buckets=(1.0,))
    slot = board.allocate()
    board.start_run(slot, 1, "a", "t", "m:f", 1, None, None, 3, 0.5)
    board.finish_run(slot, "ok", 0.1)
    board.release(slot)
    again = board.allocate()
    assert again == slot
    r = board.report(again)
    assert r.finished == 0 and not any(r.counts) and r.job_id == "" and board.partition(again) is None


def test_workers_started_into_a_backlog_are_seen_busy_before_ready(governor):
    """A worker forked into a backlog can run a job before the master has read its 'ready':
    its report shows it busy first (review finding: that transition crashed the master)."""

    for i in range(200):
        governor.client.enqueue("q", "tasks:sleep_then_record", f"j{i}", 0.02)
    governor.start({"q": 16}, wait=False)
    states = set()
    deadline = time.monotonic() + 30
    while len(set(governor.lines("done"))) < 200 and time.monotonic() < deadline:
        try:
            states |= {w["state"] for w in governor.workers("q", ("starting", "idle", "busy"))}
        except ValueError:
            pass
        governor.assert_running()
    assert len(set(governor.lines("done"))) == 200
    governor.assert_running()
    assert "busy" in states
    assert "illegal transition" not in governor.log()
