"""What the web page costs the master's loop, in one command on a private redis-server.

    .venv/bin/python bench/webload.py [--kills 10] [--views 5] [--src DIR]

One master with a queue of 1024 partitions (the config's most) and a queue whose jobs sleep
past a 1 s hard limit. Prints:
- the page's view with that queue: the longest time the loop is held by it at once (the
  whole view before it was built in steps) and the whole build's time;
- how late 1 s hard kills land (p50, max) with nobody looking, and while a client fetches
  the page in a loop (the budget is 100 ms);
- a page view with 40 queue names of 1 MB registered: its size and time.
``--src`` runs another checkout (e.g. ``git archive main | tar -x -C /tmp/before``) for a
before/after comparison; the master runs from it too.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
TASKS = "import time\n\n\ndef sleep(seconds):\n    time.sleep(seconds)\n"
HARD = 1.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout: float, what: str, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while not (v := pred()):
        if time.monotonic() > deadline:
            raise SystemExit(f"webload: timed out waiting for {what}")
        time.sleep(interval)
    return v


def get(listen: str, path: str = "/") -> tuple[int, int, float]:
    """(status, bytes, seconds) of one GET, sent with Host: the address itself."""
    host, port = listen.rsplit(":", 1)
    t0 = time.perf_counter()
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: {listen}\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(1 << 16):
            data += chunk
    status = int(data.split(b" ", 2)[1]) if data else 0
    return status, len(data), time.perf_counter() - t0


def view_cost(url: str, prefix: str, cfg_path: Path, views: int) -> tuple[float, float]:
    """(longest single hold of the loop, whole build) in ms, medians over ``views`` views, the
    view built in this process exactly as the master builds it."""
    from governor import Client
    from governor.config import load_config
    from governor.ops.web import WebPage

    cfg = load_config(str(cfg_path))
    page = WebPage(Client.from_url(url, prefix=prefix), None, lambda: True, lambda: list(cfg.queues.values()),
                   dict, ("bench:1", lambda: {"master": {"host": "bench", "pid": 1, "uptime": 1.0}, "pools": []}))
    holds, totals = [], []
    for _ in range(views):
        if hasattr(page, "views"):  # built in steps, one per loop pass
            page.views.view = None
            page.views.start()
            longest, t0 = 0.0, time.perf_counter()
            while page.views.building:
                s0 = time.perf_counter()
                page.views.step()
                longest = max(longest, time.perf_counter() - s0)
            total = time.perf_counter() - t0
        else:  # (before: one call, in one pass)
            page._view = None
            t0 = time.perf_counter()
            page.view()
            longest = total = time.perf_counter() - t0
        holds.append(longest * 1000)
        totals.append(total * 1000)
    return statistics.median(holds), statistics.median(totals)


def kills(client, n: int, fetch: str | None) -> list[float]:
    """Overshoot (ms) of ``n`` 1 s hard kills; ``fetch``: a client GETs the page meanwhile."""
    stop = threading.Event()

    def fetcher() -> None:
        while not stop.is_set():
            try:
                get(fetch)
            except OSError:
                time.sleep(0.05)

    thread = threading.Thread(target=fetcher, daemon=True) if fetch else None
    if thread:
        thread.start()
    ids = client.enqueue_many("slow", [{"handler": "webtasks:sleep", "args": [30]} for _ in range(n)])
    wait_for(lambda: all((client.job(i, "slow") or {}).get("state") == "dead" for i in ids), 60 + 3 * n,
             "the hard kills", interval=0.1)
    stop.set()
    if thread:
        thread.join()
    return sorted((client.job(i, "slow")["errors"][0]["seconds"] - HARD) * 1000 for i in ids)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--views", type=int, default=5)
    ap.add_argument("--src", default=str(ROOT), help="the checkout to run (default: this one)")
    args = ap.parse_args()
    sys.path.insert(0, args.src)
    env = dict(os.environ, PYTHONPATH=args.src, PYTHONUNBUFFERED="1")
    from governor import Client

    tmp = Path(tempfile.mkdtemp(prefix="webload-"))
    port = free_port()
    redis_proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--dir", str(tmp)], stdout=subprocess.DEVNULL)
    master = None
    try:
        url, prefix, listen = f"redis://127.0.0.1:{port}/0", "wl", f"127.0.0.1:{free_port()}"
        (tmp / "webtasks.py").write_text(TASKS)
        cfg_path = tmp / "governor.yaml"
        cfg_path.write_text(yaml.safe_dump({
            "redis": {"url": url, "prefix": prefix}, "state_dir": str(tmp / "state"),
            "app": {"path": [str(tmp)], "handlers": ["webtasks:*"]}, "metrics": {"listen": listen},
            "queues": {"wide": {"concurrency": 1, "partitions": 1024},
                       "slow": {"concurrency": 2, "timeout": {"soft": "off", "hard": f"{HARD}s"},
                                "retry": {"max": 0}}}}))
        client = Client.from_url(url, prefix=prefix)
        wait_for(lambda: _pings(client), 10, "redis-server")
        master = subprocess.Popen([sys.executable, "-m", "governor", "run", "-c", str(cfg_path)], env=env,
                                  cwd=tmp, stdout=open(tmp / "master.log", "wb"), stderr=subprocess.STDOUT)
        wait_for(lambda: _page_up(listen), 30, "the master's page")
        client.enqueue("wide", "webtasks:sleep", 0, key="k")  # registers the queue as a producer would
        hold, total = view_cost(url, prefix, cfg_path, args.views)
        quiet = kills(client, args.kills, None)
        loaded = kills(client, args.kills, listen)
        client.redis.sadd(f"{prefix}:queues", *[f"{i:02d}" + "n" * (1 << 20) for i in range(40)])
        time.sleep(1.5)  # the view cached before them is stale: this GET gathers one with them
        status, size, seconds = get(listen)
        late = kills(client, 4, listen)
    finally:
        if master:
            master.terminate()
            master.wait(30)
        redis_proc.terminate()
        redis_proc.wait(10)
    rows = [("measure (source: " + args.src + ")", "value", "budget"),
            ("view, 1024-partition queue: longest loop hold", f"{hold:.1f} ms", "< 100 ms"),
            ("view, 1024-partition queue: whole build", f"{total:.1f} ms", ""),
            (f"1 s hard kill overshoot, nobody looking: p50/max ({len(quiet)})",
             f"{statistics.median(quiet):.0f} / {quiet[-1]:.0f} ms", "< 100 ms"),
            (f"... while a client fetches the page in a loop: p50/max ({len(loaded)})",
             f"{statistics.median(loaded):.0f} / {loaded[-1]:.0f} ms", "< 100 ms"),
            ("page with 40 registered names of 1 MB: status, size, time",
             f"{status}, {size / 1e6:.2f} MB, {seconds * 1000:.0f} ms", ""),
            (f"... hard kill overshoot meanwhile: max ({len(late)})", f"{late[-1]:.0f} ms", "< 100 ms")]
    width = max(len(r[0]) for r in rows)
    for r in rows:
        print(f"{r[0]:<{width}}  {r[1]:>22}  {r[2]}")
    return 0


def _pings(client) -> bool:
    try:
        return bool(client.redis.ping())
    except Exception:  # noqa: BLE001 - starting
        return False


def _page_up(listen: str) -> bool:
    try:
        return get(listen)[0] == 200
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
