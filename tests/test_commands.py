"""Command pools: governor runs and governs programs in other languages (real Node, real sh)."""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from harness import APPS, wait_for

EXAMPLES = Path(__file__).resolve().parent.parent / "etc" / "examples"
NODE = shutil.which("node")
APP = {"path": ["."], "handlers": ["tasks:*", "demo:*", "shell:*"]}

# a program whose grandchild allocates past the limit (the whole tree is what counts)
HOG = ("import subprocess, sys, time\n"
       "subprocess.Popen([sys.executable, '-c', 'x = bytearray(160 << 20); import time; time.sleep(60)'])\n"
       "time.sleep(60)\n")


def node_pool(**extra) -> dict:
    return {"command": [NODE, str(EXAMPLES / "worker.js")], "protocol": "jsonl", **extra}


def programs(governor) -> list[psutil.Process]:
    """The programs the workers run (the workers' own children)."""
    return [c for w in governor.children() for c in w.children()]


def test_a_tree_over_memory_hard_is_killed_whole_and_replaced(governor):
    governor.start({"hogs": {"command": [sys.executable, "-c", HOG], "concurrency": 3,
                             "memory": {"soft": "off", "hard": "100MiB", "interval": "100ms"}}}, app=APP)

    def killed() -> int:
        pool = next(p for p in governor.status()["pools"] if p["queue"] == "hogs")
        return pool["exits"].get("memory_hard", 0)

    wait_for(lambda: killed() >= 3, 20, "three memory_hard kills")
    assert "reason memory_hard" in governor.log()
    governor.wait_workers("hogs", 3)  # replaced
    workers = {w["pid"] for w in governor.workers("hogs")}
    hogs = [p for p in psutil.process_iter(["cmdline", "ppid"])
            if (p.info["cmdline"] or [""])[-1].startswith("x = bytearray")]
    for hog in hogs:  # every allocating grandchild left is a live copy's: none of a killed tree
        try:
            assert psutil.Process(hog.info["ppid"]).ppid() in workers, hog
        except psutil.NoSuchProcess:
            pass  # (killed meanwhile: a new copy over the limit)


def test_a_program_that_ignores_sigterm_is_killed_after_shutdown_timeout(governor):
    governor.start({"stubborn": {"command": ["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"],
                                 "concurrency": 1}}, shutdown_timeout="2s")
    wait_for(lambda: programs(governor), 5, "the program")
    prog = programs(governor)[0]
    t0 = time.monotonic()
    governor.signal(signal.SIGTERM)
    assert governor.wait_exit(15) == 0
    took = time.monotonic() - t0
    assert 1.8 <= took < 8, took
    assert not prog.is_running() or prog.status() == psutil.STATUS_ZOMBIE


def test_output_is_logged_line_by_line_and_a_missing_program_backs_off(governor):
    governor.start({"talk": {"command": ["sh", "-c", "echo hello from sh; echo oops >&2; sleep 60"],
                             "concurrency": 1},
                    "broken": {"command": ["/no/such/program"], "concurrency": 1}}, wait=False)
    wait_for(lambda: "talk[0] stdout: hello from sh" in governor.log(), 10, "the program's stdout")
    assert "talk[0] stderr: oops" in governor.log()

    def backing_off() -> dict | None:
        try:
            pool = next(p for p in governor.status()["pools"] if p["queue"] == "broken")
        except OSError:
            return None
        return pool["backoff"]

    backoff = wait_for(backing_off, 10, "the broken pool to back off")
    assert "/no/such/program" in backoff["last_error"]
    out = subprocess.run([sys.executable, "-m", "governor", "check", "-c", str(governor.config_path)],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "queues.broken.command: /no/such/program: no such file" in out.stderr


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_node_jobs_run_once_and_every_failure_is_governed(governor):
    governor.start({"node": node_pool(concurrency=2, retry={"max": 1, "backoff": "10ms"},
                                      timeout={"soft": "off", "hard": "1s"})}, app=APP)
    c = governor.client
    ids = c.enqueue_many("node", [{"handler": "demo:add", "args": [i, 1]} for i in range(500)])
    wait_for(lambda: c.counts("node")["done_total"] == 500, 60, "500 jobs", interval=0.1)
    assert sorted(c.job(i)["result"] for i in ids[:50]) == sorted(i + 1 for i in range(50))
    assert all(c.job(i)["attempts"] == 1 for i in ids[::25])

    hung = c.enqueue("node", "demo:sleep", 10_000)  # over the 1 s hard limit: killed, retried, dead
    wait_for(lambda: c.job(hung)["state"] == "dead", 15, "the hung job to be killed twice")
    assert [e["reason"] for e in c.job(hung)["errors"]] == ["timeout_hard", "timeout_hard"]

    garbage = c.enqueue("node", "demo:garbage")
    wait_for(lambda: c.job(garbage)["state"] == "dead", 15, "the garbage job")
    errors = c.job(garbage)["errors"]
    assert len(errors) == 2 and all("not a JSON line" in e["error"] for e in errors)
    governor.wait_workers("node", 2)  # the workers were replaced

    slow = c.enqueue("node", "demo:sleep", 800)
    running = wait_for(lambda: [w for w in governor.workers("node", ("busy",)) if (w["job"] or {}).get("id") == slow],
                       5, "the slow job to start")[0]
    wait_for(lambda: f"stdout: job {slow}" in governor.log(), 5, "the program to read the slow job")
    for p in psutil.Process(running["pid"]).children():
        p.kill()  # the program running it SIGKILLed mid-job
    wait_for(lambda: c.job(slow)["state"] == "done", 15, "the killed program's job to run again")
    record = c.job(slow)
    assert record["attempts"] == 2, record
    assert "the program was killed by SIGKILL during the job" in record["errors"][0]["error"], record
    assert "reason protocol_error" in governor.log()
    dead_letters = c.counts("node")["dead"]
    assert dead_letters == 2


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_a_job_whose_handler_is_not_allowed_is_dead_lettered_unsent(governor):
    governor.start({"node": node_pool(concurrency=1)}, app={"path": ["."], "handlers": ["demo:add"]})
    c = governor.client
    job = c.enqueue("node", "demo:fail", "must not run")
    wait_for(lambda: c.job(job)["state"] == "dead", 10, "the job refused")
    assert c.job(job)["reason"] == "not_allowed" and "not sent to the program" in c.job(job)["errors"][0]["error"]
    assert "stdout: job" not in governor.log()  # the program never saw it (it logs every job it gets)


def test_the_shell_example_answers(governor):
    governor.start({"shell": {"command": ["sh", str(EXAMPLES / "worker.sh")], "protocol": "jsonl",
                              "concurrency": 1}}, app=APP)
    c = governor.client
    job = c.enqueue("shell", "shell:upper", "hello")
    wait_for(lambda: c.job(job)["state"] == "done", 10, "the shell job")
    assert c.job(job)["result"] == "HELLO"
    assert collections.Counter(governor.log().split()).get("shell[0]", 0) >= 1


def test_a_reload_that_changes_env_restarts_the_copies_one_batch_at_a_time(governor):
    """4 copies, recycle.max_concurrent 1: never more than one old copy stopping at once, the
    other pool's workers untouched."""
    echo = {"command": ["sh", "-c", "echo version $V; trap 'sleep 0.5; exit 0' TERM; while :; do sleep 0.1; done"],
            "concurrency": 4, "recycle": {"max_concurrent": 1}}
    other = {"command": ["sh", "-c", "while :; do sleep 0.1; done"], "concurrency": 1}
    governor.start({"echo": {**echo, "env": {"V": "one"}}, "other": other})
    wait_for(lambda: governor.log().count("stdout: version one") == 4, 10, "four copies of version one")
    before = {w["pid"] for w in governor.workers("other")}
    governor.write({"echo": {**echo, "env": {"V": "two"}}, "other": other})
    governor.signal(signal.SIGHUP)
    most = 0
    while governor.log().count("stdout: version two") < 4:
        pool = next(p for p in governor.status()["pools"] if p["queue"] == "echo")
        stopping = sum(1 for w in pool["workers"] if w["state"] in ("draining", "stopping"))
        most = max(most, stopping)
        assert stopping <= 1, pool["workers"]
        time.sleep(0.05)
        assert governor.proc.poll() is None
    assert most == 1  # it did roll
    assert {w["pid"] for w in governor.workers("other")} == before


@pytest.mark.parametrize("queue, path, words", [
    ("{command: [], concurrency: 1}", "queues.email.command", "non-empty list"),
    ("{protocol: jsonl, concurrency: 1}", "queues.email.protocol", "applies to a command pool"),
    ("{command: [node, w.js], protocol: xml}", "queues.email.protocol", "expected one of jsonl"),
    ("{command: [sh], stop_signal: KILL}", "queues.email.stop_signal", "a signal a program can handle"),
    ("{command: [sh], env: [A]}", "queues.email.env", "mapping of variable names"),
    ("{command: [./missing-worker.sh]}", "queues.email.command", "no such file"),
    ("{command: [no-such-program-anywhere]}", "queues.email.command", "not found on PATH"),
])
def test_check_rejects_bad_command_pools_naming_the_path(tmp_path, queue, path, words):
    from test_config import BASE, check

    out = check(tmp_path, BASE.replace("{concurrency: 3}", queue))
    assert out.returncode == 2, out.stdout
    assert f"{path}:" in out.stderr and words in out.stderr, out.stderr


def jsonl_pool(governor, program: str, *args: str, **extra) -> dict:
    """A jsonl command pool running ``program``: a program of tests/apps/ by name (one_job,
    chatty), else the text of one, written beside the config."""
    path = APPS / f"{program}.py"
    if not path.exists():
        path = governor.dir / "program.py"
        path.write_text(program)
    return {"command": [sys.executable, str(path), *args], "protocol": "jsonl", "concurrency": 1,
            "retry": {"max": 0}, **extra}


def settled(c, ids: list[str]) -> list[dict] | None:
    jobs = [c.job(i) for i in ids]
    return jobs if all(j["state"] in ("done", "dead") for j in jobs) else None


@pytest.mark.parametrize("linger", ["0", "0.3"])
def test_a_program_that_exits_between_jobs_costs_no_job_an_attempt(governor, linger):
    """Each job after the first meets a program that exited (or is about to, its line unread in
    the pipe): never handed over, so requeued uncharged and run by the next copy. A job the
    program read and then died on is its crash, charged as before."""
    governor.start({"once": jsonl_pool(governor, "one_job", linger)}, app={"path": ["."], "handlers": ["t:*"]})
    c = governor.client
    ids = [c.enqueue("once", "t:echo", i) for i in range(4)]
    jobs = wait_for(lambda: settled(c, ids), 30, "the four jobs")
    assert [(j["state"], j["attempts"], j["errors"], j.get("result")) for j in jobs] == \
        [("done", 1, [], i) for i in range(4)], jobs
    assert "not handed over" in governor.log()
    die = c.enqueue("once", "t:die")
    record = wait_for(lambda: settled(c, [die]), 15, "the job the program died on")[0]
    assert (record["state"], record["reason"], record["attempts"]) == ("dead", "protocol_error", 1), record
    assert "exited with code 3 during the job" in record["errors"][0]["error"], record


def test_a_program_that_dies_before_its_first_job_backs_off_and_charges_nothing(governor):
    governor.start({"stillborn": jsonl_pool(governor, "import time; time.sleep(0.1)\n")},
                   app={"path": ["."], "handlers": ["t:*"]}, wait=False)
    c = governor.client
    job = c.enqueue("stillborn", "t:echo", 1)

    def backoff() -> dict | None:
        return governor.backoff("stillborn")

    wait_for(lambda: (backoff() or {}).get("seconds", 0) >= 2, 20, "the pool to back off twice")
    state = backoff()
    assert "exited with code 0 before taking its first job" in state["last_error"], state
    record = c.job(job)  # (back in waiting, or taken again by the latest copy)
    assert record["errors"] == [] and (record["state"], record["attempts"]) in (("waiting", 0), ("active", 1)), record


def test_a_big_job_line_does_not_deadlock_against_a_program_that_logs(governor):
    """The worker writes a 200 KB job line while the program writes 256 KB of log: the worker
    must read the program's output while its line waits for room in the pipe."""
    governor.start({"chatty": jsonl_pool(governor, "chatty", timeout={"soft": "off", "hard": "5s"})},
                   app={"path": ["."], "handlers": ["t:*"]}, wait=False)
    c = governor.client
    job = c.enqueue("chatty", "t:len", "y" * 200_000)
    record = wait_for(lambda: settled(c, [job]), 20, "the big job")[0]
    assert (record["state"], record.get("result")) == ("done", 200_000), record
    assert governor.log().count("stdout: warming up") == 2048
