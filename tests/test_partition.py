"""Issue 16: a job never runs on two hosts at once, whatever happens to the host that holds it.

Two real `governor run` masters (separate state dirs) on one real redis-server; a job writes a
heartbeat every 20 ms, so the overlap of two runs is measured from the runs themselves. Here
the holder is cut off by SIGSTOP (of its master, or of Redis itself); tests/test_netns.py cuts
a real network link.
"""

from __future__ import annotations

import signal
import time

from fleet import LEASE, _no_overlap
from harness import free_port, http_get, wait_for


def test_a_paused_master_s_run_stops_before_another_host_takes_the_job(fleet):
    a = fleet.master("a", {"w": {"concurrency": 1}}).start()
    job = a.client.enqueue("w", "parttasks:heartbeat", "j", 4.0)
    wait_for(lambda: fleet.lines("beats"), 5, "the job to start on a")
    b = fleet.master("b", {"w": {"concurrency": 1}}).start()
    time.sleep(0.3)
    a.signal(signal.SIGSTOP)  # a VM freeze, a swap storm: the master stops, its worker runs on
    stopped = time.time()
    wait_for(lambda: len(fleet.runs()) == 2, LEASE + 4, "b to take the job over", interval=0.05)
    takeover = min(first for first, _ in fleet.runs().values() if first > stopped) - stopped
    print(f"takeover after the pause: {takeover:.2f}s")
    assert takeover < LEASE + 2, f"takeover took {takeover:.1f}s"
    time.sleep(0.5)
    a.signal(signal.SIGCONT)  # a learns its lease is gone: the frozen run is killed
    wait_for(lambda: fleet.lines("done"), 10, "the job to finish on b", interval=0.1)
    time.sleep(1.0)
    runs = _no_overlap(fleet.runs())
    print(f"first run's last beat to second run's first: {runs[1][0] - runs[0][1]:.3f}s")
    assert len(runs) == 2 and len(fleet.lines("done")) == 1, "the job completed twice"
    record = a.client.job(job)
    assert record["state"] == "done"
    lost = [e for e in record["errors"] if e.get("reason") == "lease_lost"]
    assert lost and lost[0]["cut_off"] > LEASE / 2, record["errors"]
    assert "lost the lease" in a.log()
    # the paused master lives, and takes jobs again
    a.client.enqueue("w", "tasks:record", "after")
    wait_for(lambda: "after" in a.lines("done") + b.lines("done"), 5, "a job after the pause")
    a.assert_running()


def test_a_short_pause_stops_nothing(fleet):
    a = fleet.master("a", {"w": {"concurrency": 1}}).start()
    a.client.enqueue("w", "parttasks:heartbeat", "j", 2.0)
    wait_for(lambda: fleet.lines("beats"), 5, "the job to start")
    a.signal(signal.SIGSTOP)
    time.sleep(LEASE * 0.3)
    a.signal(signal.SIGCONT)
    wait_for(lambda: fleet.lines("done"), 10, "the job to finish", interval=0.1)
    assert len(fleet.runs()) == 1
    beats = sorted(float(t) for _, _, t in fleet.lines("beats"))
    assert max(b2 - b1 for b1, b2 in zip(beats, beats[1:], strict=False)) < 0.3, "the run was frozen: a false alarm"
    assert "frozen" not in a.log() and "lost the lease" not in a.log()


def test_redis_paused_longer_than_the_lease_freezes_the_run_then_it_goes_on(fleet, private_redis):
    a = fleet.master("a", {"w": {"concurrency": 1}}).start()
    job = a.client.enqueue("w", "parttasks:heartbeat", "j", 3.0)
    wait_for(lambda: fleet.lines("beats"), 5, "the job to start")
    time.sleep(0.3)
    private_redis.proc.send_signal(signal.SIGSTOP)
    paused = time.time()
    time.sleep(LEASE + 1.5)
    beats = [float(t) for _, _, t in fleet.lines("beats")]
    assert max(beats) < paused + LEASE, "the run went on past its lease while Redis was away"
    private_redis.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: fleet.lines("done"), 15, "the job to finish", interval=0.1)
    assert len(fleet.runs()) == 1  # the same run, thawed: its lease was still ours
    assert a.client.job(job)["state"] == "done" and a.client.job(job)["attempts"] == 1
    assert "resumed after" in a.log()


def test_a_master_cut_off_from_redis_keeps_governing(fleet, private_redis):
    port = free_port()
    a = fleet.master("a", {"w": {"concurrency": 2, "timeout": {"soft": "off", "hard": "1s"}}},
                     metrics={"listen": f"127.0.0.1:{port}"}, health={"redis_grace": "1s"},
                     shutdown_timeout="2s")
    a.start()
    a.client.enqueue("w", "parttasks:fence", "slow", 30)
    wait_for(lambda: fleet.lines("fences"), 5, "the job to start")
    started = time.monotonic()
    private_redis.proc.send_signal(signal.SIGSTOP)  # replies stop; connections hang, like a partition
    try:
        # the hard timeout is still enforced from the master's own clock
        wait_for(lambda: "timeout_hard" in a.log(), 4, "the hard timeout")
        assert time.monotonic() - started < 2.5
        # /healthz answers, and says why it fails
        code, body = wait_for(lambda: (r := http_get(f"http://127.0.0.1:{port}/healthz", timeout=2))[0] == 503 and r, 6,
                              "/healthz to report Redis")
        assert b"redis unreachable" in body
        t0 = time.monotonic()
        code, _ = http_get(f"http://127.0.0.1:{port}/healthz", timeout=2)
        assert time.monotonic() - t0 < 0.5, "/healthz was held up by a Redis call"
        a.signal(signal.SIGTERM)
        assert a.wait_exit(8) == 0
    finally:
        private_redis.proc.send_signal(signal.SIGCONT)


def test_the_fencing_token_grows_across_the_runs_of_a_job(fleet):
    a = fleet.master("a", {"w": {"concurrency": 1, "timeout": {"soft": "off", "hard": "300ms"},
                                 "retry": {"max": 3, "backoff": "10ms"}}}).start()
    a.client.enqueue("w", "tasks:record", "other")
    job = a.client.enqueue("w", "parttasks:fence", "slow", 5)
    wait_for(lambda: a.client.job(job)["state"] == "dead", 15, "the job to die of its timeouts", interval=0.1)
    runs = [(int(att), int(tok)) for key, att, tok, _ in fleet.lines("fences") if key == "slow"]
    assert [att for att, _ in runs] == [1, 2, 3, 4]
    tokens = [tok for _, tok in runs]
    assert tokens == sorted(tokens) and len(set(tokens)) == 4, tokens


def test_global_concurrency_one_holds_while_its_holder_is_paused(fleet):
    """Issue 16 with issue 9: `global_concurrency: 1` never runs two jobs at once, even when the
    master of the host running one is paused past the lease and another host takes over."""
    queue = {"w": {"concurrency": 1, "global_concurrency": 1}}
    a = fleet.master("a", queue).start()
    a.client.enqueue_many("w", [{"handler": "parttasks:heartbeat", "args": [f"j{i}", 2.0]} for i in range(2)])
    wait_for(lambda: fleet.lines("beats"), 5, "the first job to start on a")
    fleet.master("b", queue).start()
    time.sleep(0.3)
    a.signal(signal.SIGSTOP)
    wait_for(lambda: len({(k, p) for k, p, _ in fleet.lines("beats")}) >= 2, LEASE + 6,
             "b to run a job of the queue", interval=0.05)
    time.sleep(1.0)
    a.signal(signal.SIGCONT)
    wait_for(lambda: {k for k, _ in fleet.lines("done")} == {"j0", "j1"}, 20, "both jobs done", interval=0.1)
    spans: dict[tuple[str, str], tuple[float, float]] = {}
    for key, pid, t in fleet.lines("beats"):
        first, last = spans.get((key, pid), (float(t), float(t)))
        spans[(key, pid)] = (min(first, float(t)), max(last, float(t)))
    _no_overlap(dict(enumerate(spans.values())))


def test_a_reload_that_shortens_the_lease_still_freezes_in_time(fleet):
    """Review finding: a deadline proven under the old, longer lease must not outlive a reload
    to a shorter one (Redis now holds the shorter lease)."""
    import yaml

    a = fleet.master("a", {"w": {"concurrency": 1}})
    cfg = yaml.safe_load(a.config_path.read_text())
    cfg["lease"] = "60s"
    a.config_path.write_text(yaml.safe_dump(cfg))
    a.start()
    a.client.enqueue("w", "parttasks:heartbeat", "j", 8.0)
    wait_for(lambda: fleet.lines("beats"), 5, "the job to start")
    cfg["lease"] = f"{LEASE}s"
    a.config_path.write_text(yaml.safe_dump(cfg))
    a.signal(signal.SIGHUP)
    wait_for(lambda: "reloaded" in a.log(), 5, "the reload")
    time.sleep(1.0)  # a renewal under the new lease
    a.signal(signal.SIGSTOP)
    paused = time.time()
    time.sleep(LEASE + 1.0)
    beats = [float(t) for _, _, t in fleet.lines("beats")]
    a.signal(signal.SIGCONT)
    assert max(beats) < paused + LEASE, "the run went on past the (shortened) lease"


def test_per_key_order_holds_while_the_runner_is_paused(fleet):
    """Issue 16 with issue 10: two jobs of one ordering key; the master running the first is
    paused past the lease, its partitions and the job's lease lapse and another host takes
    both. The first job runs again there; the second starts only after that run is done, and
    no two runs of the key ever overlap (the paused host's run is frozen by its sentry)."""
    queue = {"ordered": {"concurrency": 1, "partitions": 2}}
    a = fleet.master("a", queue).start()
    a.client.enqueue_many("ordered", [{"handler": "parttasks:heartbeat", "args": [f"j{i}", 4.0 - 3 * i],
                                       "key": "acct-7"} for i in range(2)])
    wait_for(lambda: fleet.lines("beats"), 5, "the first job to start on a")
    fleet.master("b", queue).start()
    time.sleep(0.3)
    a.signal(signal.SIGSTOP)
    wait_for(lambda: len({p for _, p, _ in fleet.lines("beats")}) >= 2, LEASE * 2 + 6,
             "b to run the key's job", interval=0.05)
    time.sleep(1.0)
    a.signal(signal.SIGCONT)
    wait_for(lambda: {k for k, _ in fleet.lines("done")} == {"j0", "j1"}, 20, "both jobs done", interval=0.1)
    assert [k for k, _ in fleet.lines("done")] == ["j0", "j1"]
    spans: dict[tuple[str, str], tuple[float, float]] = {}
    for key, pid, t in fleet.lines("beats"):
        first, last = spans.get((key, pid), (float(t), float(t)))
        spans[(key, pid)] = (min(first, float(t)), max(last, float(t)))
    _no_overlap(dict(enumerate(spans.values())))
    assert len([1 for k, _ in spans if k == "j0"]) == 2, "j0 was not taken over by b"
    assert min(s for (k, _), (s, _) in spans.items() if k == "j1") > \
        max(e for (k, _), (_, e) in spans.items() if k == "j0"), "j1 started before j0's last run ended"
