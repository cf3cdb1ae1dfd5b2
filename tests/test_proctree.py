"""A worker's whole process tree dies with it: grandchildren in sessions of their own, double-forked
daemons, and all of it when the master itself is SIGKILLed. Real processes, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

from governor.supervise import proctree

from harness import APPS, dead_lettered, wait_for


def start(governor, queues):
    governor.add_app("treetasks")  # app.handlers: tasks:*, treetasks:*
    return governor.start(queues)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def dead_letter(governor, job, timeout=15):
    return dead_lettered(governor.client, job, timeout, interval=0.02)


def _pidfd_targets(pid: int) -> set[int]:
    """The pids named by the pidfds ``pid`` holds (the ``Pid:`` line of each one's fdinfo)."""
    targets = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fdinfo")
    except OSError:
        return targets
    for fd in fds:
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as fh:
                targets.update(int(line.split()[1]) for line in fh if line.startswith("Pid:"))
        except (OSError, ValueError, IndexError):
            pass
    return targets


def sentries(master: int) -> list[psutil.Process]:
    """Every live sentry watching ``master`` (holding a pidfd of it), wherever it sits in the
    process table: the master's own and any left over."""
    found = []
    for p in psutil.process_iter(["cmdline", "name", "status"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if ("proctree.py" in cmd or p.info["name"] == "governor-sentry") \
                and p.info["status"] != psutil.STATUS_ZOMBIE and master in _pidfd_targets(p.pid):
            found.append(p)
    return found


def grandchild(governor) -> int:
    return int(wait_for(lambda: governor.lines("grandchild"), 10, "the grandchild's pid")[0])


def test_memory_hard_kills_a_grandchild_in_a_session_of_its_own(governor):
    start(governor, {"q": {"concurrency": 1, "memory": {"soft": "off", "hard": "150MiB", "interval": "100ms"},
                           "retry": {"max": 0}}})
    job = governor.client.enqueue("q", "treetasks:setsid_hog", 300)
    pid = grandchild(governor)
    record = dead_letter(governor, job)
    assert record["reason"] == "memory_hard" and record["errors"][0]["memory"] > 150 * 2**20
    wait_for(lambda: gone(pid), 1, "the grandchild that held the memory to be gone")


def test_timeout_hard_kills_a_sleeping_grandchild_in_a_session_of_its_own(governor):
    start(governor, {"q": {"concurrency": 1, "timeout": {"soft": "off", "hard": "1s"}, "retry": {"max": 0}}})
    job = governor.client.enqueue("q", "treetasks:setsid_sleeper")
    pid = grandchild(governor)
    worker = governor.workers("q")[0]["pid"]
    [sentry] = sentries(governor.proc.pid)
    assert sentry.pid not in proctree.descendants(worker)  # outside the tree: not measured, not killed
    assert dead_letter(governor, job)["reason"] == "timeout_hard"
    wait_for(lambda: gone(pid), 1, "the grandchild to be gone")
    governor.wait_workers("q", 1)
    assert sentries(governor.proc.pid) == [sentry]  # the master's: it outlives the workers it watched


def test_timeout_hard_kills_a_double_forked_daemon_the_worker_adopted(governor):
    start(governor, {"q": {"concurrency": 1, "timeout": {"soft": "off", "hard": "1500ms"}, "retry": {"max": 0}}})
    job = governor.client.enqueue("q", "treetasks:daemon_then_sleep", 60, 30)
    pid = grandchild(governor)
    worker = governor.workers("q")[0]["pid"]
    # its parent exited: it was re-parented to the worker (a subreaper), not to init, so it stays measured
    assert psutil.Process(pid).ppid() == worker
    assert dead_letter(governor, job)["reason"] == "timeout_hard"
    wait_for(lambda: gone(pid), 1, "the daemon to be gone")


def test_adopted_orphans_are_reaped_and_the_jobs_own_children_keep_their_exit_codes(governor):
    start(governor, {"q": {"concurrency": 1}})
    job = governor.client.enqueue("q", "treetasks:daemon_and_children_exit", "k")
    wait_for(lambda: governor.client.job(job)["state"] == "done", 10, "the job to finish")
    assert governor.lines("codes") == ["3,4"]  # subprocess still got its children's real exit codes
    daemon = int(governor.lines("daemon")[0])
    # reaped by the worker between jobs (not from a SIGCHLD handler: that would hand the job's
    # own poll/select/sleep calls an EINTR at every child's exit)
    wait_for(lambda: not os.path.exists(f"/proc/{daemon}"), 3, "the adopted daemon's zombie to be reaped")


def test_a_sigkilled_master_takes_the_worker_and_its_setsid_grandchild_with_it(governor):
    start(governor, {"q": {"concurrency": 1}})
    governor.client.enqueue("q", "treetasks:setsid_sleeper")
    pid = grandchild(governor)
    worker = wait_for(lambda: governor.workers("q", ("busy",)), 5, "a busy worker")[0]["pid"]
    [sentry] = sentries(governor.proc.pid)
    governor.proc.kill()
    governor.wait_exit()
    wait_for(lambda: gone(worker) and gone(pid), 2, "the worker and its grandchild to be gone")
    wait_for(lambda: gone(sentry.pid), 1, "the sentry to exit")


def test_a_worker_blocked_in_c_with_signals_masked_still_dies_with_a_sigkilled_master(governor):
    start(governor, {"q": {"concurrency": 1}})
    governor.client.enqueue("q", "tasks:blocked_in_c", "c", 30)
    wait_for(lambda: governor.lines("start"), 5, "the job to start")
    worker = wait_for(lambda: governor.workers("q", ("busy",)), 5, "a busy worker")[0]["pid"]
    governor.proc.kill()
    governor.wait_exit()
    wait_for(lambda: gone(worker), 2, "the worker to be gone")


# -- one sentry per master -------------------------------------------------------------------------

def busy_trees(governor, n: int) -> tuple[list[int], list[int]]:
    """n busy workers, each running a job with a sleeping grandchild in a session of its own."""
    for _ in range(n):
        governor.client.enqueue("q", "treetasks:setsid_sleeper")
    grandchildren = [int(p) for p in wait_for(lambda: len(governor.lines("grandchild")) == n
                                              and governor.lines("grandchild"), 10, f"{n} grandchildren")]
    workers = [w["pid"] for w in wait_for(lambda: len(governor.workers("q", ("busy",))) == n
                                          and governor.workers("q", ("busy",)), 5, f"{n} busy workers")]
    return workers, grandchildren


def test_one_small_sentry_watches_every_worker_of_a_master(governor):
    start(governor, {"q": {"concurrency": 4}})
    master = governor.proc.pid
    [sentry] = sentries(master)  # one, not one per worker
    assert sentry.ppid() == master and sentry.name() == "governor-sentry"
    assert os.getsid(sentry.pid) == sentry.pid  # a session of its own: no terminal's or group's signals
    workers = {w["pid"] for w in governor.workers("q")}
    wait_for(lambda: workers <= _pidfd_targets(sentry.pid), 2, "the sentry to hold every worker's pidfd")
    assert all(sentry.pid not in proctree.descendants(w) for w in workers)
    uss = sentry.memory_full_info().uss
    assert uss < 15 * 2**20, f"{uss / 2**20:.1f} MiB private"


def test_a_sigkilled_master_takes_every_worker_tree_and_its_sentry_with_it(governor):
    start(governor, {"q": {"concurrency": 3}})
    workers, grandchildren = busy_trees(governor, 3)
    [sentry] = sentries(governor.proc.pid)
    governor.proc.kill()
    governor.wait_exit()
    t0 = time.monotonic()
    wait_for(lambda: all(gone(p) for p in workers + grandchildren), 2,
             "every worker and grandchild to be gone")
    assert time.monotonic() - t0 < 2
    wait_for(lambda: gone(sentry.pid), 1, "the sentry to exit")


def test_a_killed_sentry_is_replaced_and_the_new_one_still_kills_every_tree(governor):
    start(governor, {"q": {"concurrency": 2}})
    master = governor.proc.pid
    workers, grandchildren = busy_trees(governor, 2)
    [old] = sentries(master)
    old.kill()
    new = wait_for(lambda: [s for s in sentries(master) if s.pid != old.pid], 1, "a new sentry")[0]
    assert new.ppid() == master
    wait_for(lambda: set(workers) <= _pidfd_targets(new.pid), 1, "the new sentry to hold every worker")
    assert f"sentry {old.pid} exited (killed by SIGKILL)" in governor.log()
    governor.assert_running()
    assert {w["pid"] for w in governor.workers("q", ("busy",))} == set(workers)  # no worker disturbed
    governor.proc.kill()
    governor.wait_exit()
    wait_for(lambda: all(gone(p) for p in workers + grandchildren), 2,
             "every worker and grandchild to be gone")
    wait_for(lambda: gone(new.pid), 1, "the new sentry to exit")


def test_a_clean_stop_leaves_no_sentry_behind(governor):
    start(governor, {"q": {"concurrency": 2}})
    master = governor.proc.pid
    [sentry] = sentries(master)
    governor.client.enqueue("q", "tasks:sleep_then_record", "drained", 0.3)
    wait_for(lambda: governor.lines("start"), 5, "the job to start")
    governor.signal(signal.SIGTERM)
    assert governor.wait_exit() == 0
    assert gone(sentry.pid)  # reaped by the master before it exited, not left to init
    assert governor.lines("done") == ["drained"]
    assert not [line for line in governor.log().splitlines() if "sentry" in line
                and ("ERROR" in line or "WARNING" in line or "Traceback" in line)]


# tests/apps/fake_master.py: three workers that stop when it dies, each with a grandchild in a
# session of its own, handed to the sentry while the test holds the sentry stopped; then it dies.
def test_workers_handed_over_but_not_yet_read_are_killed_when_the_master_dies(tmp_path):
    records = tmp_path / "records"
    records.mkdir()
    master = subprocess.Popen([sys.executable, str(APPS / "fake_master.py"), str(records)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        sentry = psutil.Process(int(master.stdout.readline()))
        sentry.suspend()  # SIGSTOP: every hand-over stays queued in its socket
        master.stdin.write("go\n")
        master.stdin.flush()
        assert master.wait(10) == -signal.SIGKILL
        pids = [int(p) for f in records.iterdir() for p in f.read_text().split()]
        assert len(pids) == 6
        wait_for(lambda: all(psutil.Process(p).status() == psutil.STATUS_STOPPED
                             for p in pids[::2]), 2, "the workers to stop with their master")
        sentry.resume()
        wait_for(lambda: all(gone(p) for p in pids), 2, "every worker and grandchild to be gone")
        wait_for(lambda: gone(sentry.pid), 1, "the sentry to exit")
    finally:
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        master.kill()
        master.wait()


# -- kill_tree on its own, against a tree that keeps forking ---------------------------------------

def test_kill_tree_gets_every_process_of_a_tree_that_keeps_forking(tmp_path):
    log = tmp_path / "pids"
    root = subprocess.Popen([sys.executable, str(APPS / "forker.py"), str(log)])
    try:
        wait_for(lambda: log.exists() and len(log.read_text().split()) >= 10, 10, "the tree to grow")
        found = proctree.kill_tree(root.pid)  # while it is still forking
        assert found[0] == root.pid and len(found) >= 10
        root.wait(5)
        time.sleep(0.3)  # anything that escaped would have logged its pid by now
        pids = [int(p) for p in log.read_text().split()]
        assert set(pids) <= set(found) and all(gone(p) for p in pids), \
            [p for p in pids if not gone(p)]
    finally:
        for p in (int(p) for p in log.read_text().split()) if log.exists() else ():
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        root.kill()
        root.wait()


def test_kill_tree_of_a_lone_process_is_cheap():
    lone = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.2)
        t0 = time.perf_counter()
        assert proctree.kill_tree(lone.pid) == [lone.pid]
        elapsed = time.perf_counter() - t0
        assert lone.wait(5) == -signal.SIGKILL
        assert elapsed < 0.05, f"{elapsed * 1000:.1f} ms"
    finally:
        lone.kill()
        lone.wait()

