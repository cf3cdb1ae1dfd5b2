"""5,000 jobs through worker SIGKILLs every 100 ms, a master SIGKILL and a Redis restart."""

from __future__ import annotations

from chaos import run_chaos


def test_chaos_every_job_completes_and_none_overlaps(tmp_path, capsys):
    result = run_chaos(tmp_path, jobs=5000, kill_every=0.1, timeout=150)
    with capsys.disabled():
        print(f"\nchaos: {result.jobs} jobs in {result.seconds:.1f}s, {result.worker_kills} worker kills, "
              f"1 master kill, 1 Redis restart: {result.ran_twice} ran twice, "
              f"{len(result.lost)} lost, {len(result.overlaps)} overlapping")
    assert result.lost == []
    assert result.overlaps == []
    assert result.dead == 0
    assert result.worker_kills >= 20  # the killer really was at work
