"""How the master reads a worker's exit and charges its job: unit tests, no fork."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from governor.config import parse_config
from governor.supervise.exits import Stopping, classify_exit, likely_first, lost_job
from governor.supervise.process import CurrentJob, State, WorkerProcess

EXIT_0 = 0
EXIT_3 = 3 << 8
SIGKILLED = signal.SIGKILL


def _worker(state: State = State.IDLE, reason: str | None = None, job: bool = False, done: int = 0,
            **job_fields: Any) -> WorkerProcess:
    wp = WorkerProcess(pid=4242, wid="host:4242", queue="w", index=1, generation=1, sock=None,  # type: ignore[arg-type]
                       pidfd=-1, now=100.0)
    wp.state, wp.stop_reason, wp.jobs_done = state, reason, done
    if job:
        wp.job = CurrentJob(**{"id": "j1", "token": "t1", "handler": "app:h", "attempt": 1, "since": 100.0,
                               "soft": None, "hard": 5.0, **job_fields})
    return wp


def _queue(**extra: Any) -> Any:
    cfg = parse_config({"redis": {"url": "redis://127.0.0.1:1/0"}, "app": {"handlers": ["x:*"]},
                        "queues": {"w": {"concurrency": 1, **extra}}}, os.devnull)
    return cfg.queues["w"]


def test_a_worker_that_dies_young_without_a_job_crashed_and_backs_off():
    ex = classify_exit(_worker(), EXIT_3, None)
    assert (ex.reason, ex.crashed, ex.killed, ex.back_off, ex.loud) == ("crashed", True, False, True, True)
    assert ex.description == "exit code 3" and ex.detail == {"exit_code": 3}


def test_no_backoff_once_it_finished_a_job_held_one_or_the_master_stops():
    assert not classify_exit(_worker(done=1), EXIT_3, None).back_off
    assert not classify_exit(_worker(job=True), EXIT_3, None).back_off
    for how in Stopping:
        ex = classify_exit(_worker(), EXIT_3, how)
        assert ex.crashed and not ex.back_off


def test_a_clean_exit_holding_a_job_is_a_crash():
    ex = classify_exit(_worker(State.BUSY, job=True), EXIT_0, None)
    assert ex.crashed and ex.reason == "crashed"


def test_a_worker_that_left_as_asked_did_not_crash():
    ex = classify_exit(_worker(State.DRAINING, reason="max_jobs"), EXIT_0, None)
    assert (ex.reason, ex.crashed, ex.loud) == ("max_jobs", False, False)


def test_a_kill_exits_for_the_reason_of_the_kill_with_its_figures():
    wp = _worker(State.STOPPING, reason="timeout_hard", job=True)
    wp.stop_detail, wp.peak_rss = {"limit": 5.0}, 1000
    ex = classify_exit(wp, SIGKILLED, None)
    assert (ex.reason, ex.crashed, ex.killed, ex.loud) == ("timeout_hard", False, True, True)
    assert ex.detail == {"signal": "SIGKILL", "peak_rss": 1000, "limit": 5.0}
    assert ex.description == "killed by SIGKILL"


def test_a_lie_is_charged_as_protocol_violation():
    ex = classify_exit(_worker(State.STOPPING, reason="protocol_violation", job=True), SIGKILLED, None)
    assert (ex.reason, ex.crashed, ex.loud) == ("protocol_violation", False, False)


@pytest.mark.parametrize("status, crashed", [(EXIT_0, False), (EXIT_3, True)])
def test_a_lost_channel_is_not_a_crash_when_the_worker_exits_cleanly(status, crashed):
    ex = classify_exit(_worker(State.DRAINING, reason="channel_lost"), status, None)
    assert ex.crashed is crashed
    assert ex.reason == ("crashed" if crashed else "channel_lost")


def test_a_stop_detail_counts_only_for_a_kill():
    wp = _worker(State.DRAINING, reason="drain")
    wp.stop_detail = {"limit": 1}
    assert classify_exit(wp, EXIT_0, None).detail == {"exit_code": 0}


def test_the_lost_job_of_a_shutdown_is_requeued_uncharged():
    wp = _worker(State.STOPPING, reason="shutdown", job=True, partition=2)
    ex = classify_exit(wp, SIGKILLED, Stopping.FAST)
    lost = lost_job(wp, ex, _queue(partitions=4), 1.23456)
    assert (lost.mode, lost.reason, lost.seconds, lost.known) == ("requeue", "shutdown", 1.235, ("j1", "t1"))
    assert lost.partitions == (2, 0, 1, 3)  # its job's partition first
    assert lost.handler == "app:h" and lost.keep == 0


def test_the_lost_job_of_a_crash_is_retried_within_the_queue_limit():
    wp = _worker()
    lost = lost_job(wp, classify_exit(wp, EXIT_3, None), _queue(retry={"max": 7}), None)
    assert (lost.mode, lost.max_retries, lost.seconds, lost.known, lost.partitions) == ("retry", 7, None, None, (None,))


def test_a_removed_queue_charges_without_retries():
    wp = _worker(job=True)
    lost = lost_job(wp, classify_exit(wp, EXIT_3, None), None, 0.5)
    assert (lost.max_retries, lost.partitions, lost.keep) == (0, (None,), 0)


def test_a_job_killed_at_a_learnt_limit_keeps_its_handler_runtimes():
    wp = _worker(State.STOPPING, reason="timeout_hard", job=True, adaptive=True)
    q = _queue(timeout={"soft": "5s", "hard": "10s", "adaptive": "on"})
    lost = lost_job(wp, classify_exit(wp, SIGKILLED, None), q, 5.0)
    assert lost.keep > 0
    wp.job.adaptive = False
    assert lost_job(wp, classify_exit(wp, SIGKILLED, None), q, 5.0).keep == 0


def test_likely_first_puts_the_known_partition_first():
    assert likely_first(None, [0, 1, None]) == (None, 0, 1)
    assert likely_first(1, [0, 1, 2]) == (1, 0, 2)
