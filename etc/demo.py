"""Runs governor on etc/governor.yaml and feeds it demo jobs, printing `governor status`.

    .venv/bin/python etc/demo.py            # until Ctrl-C
    .venv/bin/python etc/demo.py --seconds 20

Ctrl-C sends the master SIGTERM: in-flight jobs finish, then it exits.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(HERE, "governor.yaml")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=0, help="stop after this long (0: until Ctrl-C)")
    args = parser.parse_args()

    from governor.cli import gather_status, render_status
    from governor.config import load_config
    from governor.ops import control
    from governor.protocol.connection import resolve_url
    from governor.protocol.queue import Client

    cfg = load_config(CONFIG)
    master = subprocess.Popen([sys.executable, "-m", "governor", "run", "-c", CONFIG],
                              start_new_session=True)  # Ctrl-C is ours to translate into SIGTERM
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                control.request(cfg.state_dir, "status")
                break
            except OSError:
                if master.poll() is not None or time.monotonic() > deadline:
                    print("demo: the master did not start; see its log above", file=sys.stderr)
                    return 1
                time.sleep(0.1)
        client = Client.from_url(resolve_url(cfg.redis.url, cfg.state_dir), prefix=cfg.redis.prefix)
        client.enqueue("strict", "demo_tasks:hog", 300)   # -> dead-lettered: memory_hard
        client.enqueue("strict", "demo_tasks:stuck", 30)  # -> dead-lettered: timeout_hard
        started, last_status = time.monotonic(), 0.0
        n = 0
        while not args.seconds or time.monotonic() - started < args.seconds:
            n += 1
            client.enqueue("email", "demo_tasks:hello", name=f"user{n}", priority=10)
            if n % 3 == 0:
                client.enqueue("media", "demo_tasks:resize", 1920, 1080, seconds=random.uniform(0.2, 1.0))
            if n % 10 == 0:
                client.enqueue("email", "demo_tasks:flaky", 0.6, priority=40)
            if n % 25 == 0:
                client.enqueue("email", "os:system", "echo not allowed")  # dead-lettered, never imported
            if time.monotonic() - last_status > 3:
                last_status = time.monotonic()
                print("\n" + render_status(gather_status(cfg)) + "\n", flush=True)
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        if master.poll() is None:
            master.send_signal(signal.SIGTERM)
        code = master.wait()
    return code


if __name__ == "__main__":
    sys.exit(main())
