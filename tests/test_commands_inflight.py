"""Command pools with ``protocol: jsonl`` and ``jobs_per_worker`` > 1 (issue 23): up to N job
lines in the program at once, answers matched by id in any order, a soft limit per job, a
program that dies with jobs in flight losing none of them, drain finishing every job in flight.

Real master, real Redis, real programs: the Node example (etc/examples/worker.js) when Debian's
nodejs is there, and its Python twin (tests/apps/many_jobs.py) always."""

from __future__ import annotations

import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

from harness import APPS, wait_for

EXAMPLES = Path(__file__).resolve().parent.parent / "etc" / "examples"
NODE = shutil.which("node") or shutil.which("nodejs")
APP = {"path": ["."], "handlers": ["demo:*"]}
PROGRAMS = [
    pytest.param("python", id="python"),
    pytest.param("node", id="node", marks=pytest.mark.skipif(NODE is None, reason="nodejs is not installed")),
]


def pool(program: str, *args: str, **extra) -> dict:
    """A jsonl pool of one worker with 10 slots running ``program`` (python: many_jobs.py)."""
    command = [NODE, str(EXAMPLES / "worker.js")] if program == "node" else \
        [sys.executable, str(APPS / "many_jobs.py"), *args]
    return {"command": command, "protocol": "jsonl", "concurrency": 1, "jobs_per_worker": 10,
            "retry": {"max": 0}, **extra}


def settled(c, ids: list[str]) -> list[dict] | None:
    jobs = [c.job(i) for i in ids]
    return jobs if all(j["state"] in ("done", "dead") for j in jobs) else None


def read_by_program(governor) -> int:
    """Job lines the programs logged reading ("job <id> <handler>" on stdout)."""
    return governor.log().count("stdout: job ")


@pytest.mark.parametrize("program", PROGRAMS)
def test_answers_out_of_order_are_matched_by_id(governor, program):
    """10 jobs in one program at once, job i sleeping (10 - i) * 50 ms: the last answers first,
    each result reaches its own job, each job runs once, all in about the longest one's time."""
    governor.start({"many": pool(program)}, app=APP)
    c = governor.client
    ids = c.enqueue_many("many", [{"handler": "demo:sleep", "args": [(10 - i) * 50]} for i in range(10)])
    jobs = wait_for(lambda: settled(c, ids), 20, "the ten jobs")
    assert [(j["state"], j["attempts"], j["errors"], j["result"]) for j in jobs] == \
        [("done", 1, [], (10 - i) * 50) for i in range(10)], jobs
    finished = [j["finished_at"] for j in jobs]
    assert finished == sorted(finished, reverse=True), finished  # answered in the reverse order
    # together, not one after the other (2.75 s)
    assert max(finished) - min(j["started_at"] for j in jobs) < 1800, jobs
    holders = {j["worker"] for j in jobs}  # one worker, each job held by a slot of its own
    assert len(holders) == 10 and len({h.split("~")[0] for h in holders}) == 1, holders
    assert "protocol_error" not in governor.log()


def test_a_soft_limit_is_told_to_its_job_alone(governor):
    governor.start({"many": pool("python", timeout={"soft": "300ms", "hard": "10s"})}, app=APP)
    c = governor.client
    slow = c.enqueue("many", "demo:sleep", 1000)
    quick = [c.enqueue("many", "demo:sleep", 50) for _ in range(3)]
    jobs = wait_for(lambda: settled(c, [slow, *quick]), 15, "the four jobs")
    assert [(j["state"], j["attempts"]) for j in jobs] == [("done", 1)] * 4, jobs
    log = governor.log()
    assert f"stdout: soft time limit: {slow}" in log
    assert log.count("stdout: soft time limit:") == 1


def test_a_program_that_exits_with_five_jobs_in_flight_loses_none(governor):
    """The program exits as soon as it holds 5 jobs: it read all 5, so each goes back uncharged
    as a suspect and runs alone next time (where this program does not exit): all done once."""
    governor.start({"many": pool("python", "5")}, app=APP)
    c = governor.client
    ids = c.enqueue_many("many", [{"handler": "demo:sleep", "args": [400 + i]} for i in range(5)])
    jobs = wait_for(lambda: settled(c, ids), 30, "the five jobs")
    assert [(j["state"], j["attempts"], j["result"]) for j in jobs] == [("done", 1, 400 + i) for i in range(5)], jobs
    for j in jobs:  # each says why it ran twice, and that it was not charged
        assert [e["reason"] for e in j["errors"]] == ["protocol_error"], j
        assert "exited with code 3 with 5 jobs in flight: not charged" in j["errors"][0]["error"], j
    assert read_by_program(governor) == 10  # 5 read by the program that died, each again alone
    assert "reason protocol_error" in governor.log()  # (the worker was replaced)


@pytest.mark.parametrize("program", PROGRAMS)
def test_a_line_no_job_can_be_blamed_for_costs_the_neighbours_nothing(governor, program):
    """A line that is not JSON, with 4 jobs in flight: the program is replaced and the four
    run again as suspects, each alone; the culprit, alone, is charged and dead-lettered."""
    governor.start({"many": pool(program)}, app=APP)
    c = governor.client
    sleepers = c.enqueue_many("many", [{"handler": "demo:sleep", "args": [1500]} for _ in range(3)])
    wait_for(lambda: read_by_program(governor) == 3, 10, "the program to hold the three sleepers")
    garbage = c.enqueue("many", "demo:garbage")
    jobs = wait_for(lambda: settled(c, [*sleepers, garbage]), 30, "the four jobs")
    assert [(j["state"], j["attempts"]) for j in jobs[:3]] == [("done", 1)] * 3, jobs
    assert all("not charged" in j["errors"][0]["error"] for j in jobs[:3]), jobs
    culprit = jobs[3]
    assert (culprit["state"], culprit["reason"], culprit["attempts"]) == ("dead", "protocol_error", 1), culprit
    assert "not a JSON line" in culprit["errors"][-1]["error"], culprit


def test_a_malformed_answer_is_its_job_s_alone_and_the_others_finish(governor):
    """An answer with its job's id but no "ok": that job is charged; the two beside it finish
    in the same program, uncharged; then the program is replaced."""
    governor.start({"many": pool("python")}, app=APP)
    c = governor.client
    sleepers = c.enqueue_many("many", [{"handler": "demo:sleep", "args": [800]} for _ in range(2)])
    wait_for(lambda: read_by_program(governor) == 2, 10, "the program to hold the two sleepers")
    shapeless = c.enqueue("many", "demo:shapeless")
    jobs = wait_for(lambda: settled(c, [*sleepers, shapeless]), 15, "the three jobs")
    assert [(j["state"], j["attempts"], j["errors"]) for j in jobs[:2]] == [("done", 1, [])] * 2, jobs
    assert (jobs[2]["state"], jobs[2]["reason"], jobs[2]["attempts"]) == ("dead", "protocol_error", 1), jobs[2]
    assert "an answer without \"ok\"" in jobs[2]["errors"][0]["error"], jobs[2]
    assert read_by_program(governor) == 3  # (nothing ran twice)
    wait_for(lambda: "reason protocol_error" in governor.log(), 10, "the worker to be replaced")


@pytest.mark.parametrize("program", PROGRAMS)
def test_many_jobs_over_two_programs_each_run_once(governor, program):
    """600 short jobs over 2 programs x 20 slots: every one done, once, its own result."""
    governor.start({"many": pool(program, concurrency=2, jobs_per_worker=20)}, app=APP)
    c = governor.client
    ids = c.enqueue_many("many", [{"handler": "demo:sleep", "args": [i % 20]} for i in range(600)])
    wait_for(lambda: c.counts("many")["done_total"] == 600, 60, "600 jobs", interval=0.1)
    jobs = [c.job(i) for i in ids]
    assert [(j["state"], j["attempts"], j["result"]) for j in jobs] == [("done", 1, i % 20) for i in range(600)]
    assert read_by_program(governor) == 600


def test_a_job_past_its_hard_limit_costs_its_neighbours_nothing(governor):
    """The program cannot be told to drop one job: past hard + grace the master kills the
    worker's tree; the hung job is charged, its neighbours requeued uncharged and done."""
    governor.start({"many": pool("python", timeout={"soft": "off", "hard": "20s", "grace": "200ms"})}, app=APP)
    c = governor.client
    neighbours = c.enqueue_many("many", [{"handler": "demo:sleep", "args": [2500]} for _ in range(3)])
    wait_for(lambda: read_by_program(governor) == 3, 10, "the program to hold the three neighbours")
    hung = c.enqueue("many", "demo:sleep", 30_000, timeout=1)  # its own hard limit: 1 s
    t0 = time.monotonic()
    jobs = wait_for(lambda: settled(c, [hung, *neighbours]), 30, "the four jobs")
    assert (jobs[0]["state"], jobs[0]["reason"], jobs[0]["attempts"]) == ("dead", "timeout_hard", 1), jobs[0]
    assert 1.2 <= jobs[0]["errors"][0]["seconds"] < 2.5, jobs[0]  # killed at hard + grace
    assert time.monotonic() - t0 < 10
    for j in jobs[1:]:
        assert (j["state"], j["attempts"]) == ("done", 1), j
        assert [e["reason"] for e in j["errors"]] == ["neighbour_killed"], j


@pytest.mark.parametrize("program", PROGRAMS)
def test_drain_finishes_every_job_in_flight_once(governor, program):
    """SIGTERM with 10 jobs in the program: all 10 finish, once; the 5 behind them stay
    waiting (none starts after the signal); the master exits cleanly."""
    governor.start({"many": pool(program)}, app=APP)
    c = governor.client
    ids = c.enqueue_many("many", [{"handler": "demo:sleep", "args": [1000 + i]} for i in range(10)])
    wait_for(lambda: read_by_program(governor) == 10, 10, "ten jobs in the program")
    behind = c.enqueue_many("many", [{"handler": "demo:sleep", "args": [10]} for _ in range(5)])
    t0 = time.monotonic()
    governor.signal(signal.SIGTERM)
    assert governor.wait_exit(20) == 0
    assert time.monotonic() - t0 < 8
    jobs = [c.job(i) for i in ids]
    assert [(j["state"], j["attempts"], j["errors"], j["result"]) for j in jobs] == \
        [("done", 1, [], 1000 + i) for i in range(10)], jobs
    assert [(c.job(i)["state"], c.job(i)["attempts"]) for i in behind] == [("waiting", 0)] * 5
    assert read_by_program(governor) == 10


def test_an_answer_after_the_hard_limit_is_charged_and_costs_no_neighbour(governor):
    """Answered inside the grace: the worker is not killed, the job is charged timeout_hard
    all the same, and the job beside it is done, uncharged."""
    governor.start({"many": pool("python", timeout={"soft": "off", "hard": "20s", "grace": "2s"})}, app=APP)
    c = governor.client
    late = c.enqueue("many", "demo:sleep", 900, timeout=0.5)
    beside = c.enqueue("many", "demo:sleep", 1200)
    jobs = wait_for(lambda: settled(c, [late, beside]), 15, "the two jobs")
    assert (jobs[0]["state"], jobs[0]["reason"], jobs[0]["attempts"]) == ("dead", "timeout_hard", 1), jobs[0]
    assert "answered after its hard time limit (0.5s)" in jobs[0]["errors"][0]["error"], jobs[0]
    assert (jobs[1]["state"], jobs[1]["attempts"], jobs[1]["errors"]) == ("done", 1, []), jobs[1]
    assert "killed" not in governor.log()


def test_a_program_that_dies_before_its_first_job_backs_off_with_slots_too(governor):
    program = governor.dir / "stillborn.py"
    program.write_text("import time; time.sleep(0.1)\n")
    governor.start({"stillborn": {**pool("python"), "command": [sys.executable, str(program)]}}, app=APP, wait=False)
    c = governor.client
    job = c.enqueue("stillborn", "demo:sleep", 1)

    def backoff() -> dict | None:
        return governor.backoff("stillborn")

    wait_for(lambda: (backoff() or {}).get("seconds", 0) >= 2, 20, "the pool to back off twice")
    assert "exited with code 0 before taking its first job" in backoff()["last_error"]
    record = c.job(job)  # (back in waiting, or taken again by the latest copy)
    assert record["errors"] == [] and (record["state"], record["attempts"]) in (("waiting", 0), ("active", 1)), record
