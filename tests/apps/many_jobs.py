"""A jsonl program that runs its jobs concurrently, a thread each, and answers each as it
finishes, in any order (tests/test_commands_inflight.py): the Python twin of
etc/examples/worker.js, with the same handler names. "demo:sleep" sleeps args[0] ms and
answers it; "demo:garbage" writes a line that is not JSON and never answers;
"demo:shapeless" answers without "ok". With argv[1] = K
it exits with code 3 as soon as it holds K jobs at once, none answered (a crash with K jobs in
flight). It logs every job it reads, and every soft time limit it is told of."""

import json
import os
import sys
import threading
import time

jobs = os.fdopen(int(os.environ["GOVERNOR_JOBS_FD"]), "rb")
results = os.fdopen(int(os.environ["GOVERNOR_RESULTS_FD"]), "wb", buffering=0)
exit_at = int(sys.argv[1]) if len(sys.argv) > 1 else 0
lock = threading.Lock()
held: set[str] = set()


def answer(message: dict) -> None:
    with lock:
        results.write(json.dumps(message).encode() + b"\n")
        held.discard(message["id"])


def run(job: dict) -> None:
    if job["handler"] == "demo:sleep":
        time.sleep(job["args"][0] / 1000)
        answer({"id": job["id"], "ok": True, "result": job["args"][0]})
    elif job["handler"] == "demo:garbage":
        with lock:
            results.write(b"this is not json\n")
    elif job["handler"] == "demo:shapeless":  # its own id, but no "ok"
        answer({"id": job["id"], "result": "?"})
    else:
        answer({"id": job["id"], "ok": False, "error": f"no handler {job['handler']}", "retry": False})


for line in jobs:
    job = json.loads(line)
    if job.get("soft_timeout"):
        print(f"soft time limit: {job['id']}", flush=True)
        continue
    print(f"job {job['id']} {job['handler']}", flush=True)
    with lock:
        held.add(job["id"])
        if exit_at and len(held) >= exit_at:
            os._exit(3)
    threading.Thread(target=run, args=(job,), daemon=True).start()
