"""A jsonl program that logs 256 KB before it reads a job (four times the pipe's buffer), then
answers each job with the length of its argument (tests/test_commands.py)."""

import json
import os

for _ in range(2048):
    print("warming up " + "x" * 116, flush=True)
jobs = os.fdopen(int(os.environ["GOVERNOR_JOBS_FD"]), "rb")
results = os.fdopen(int(os.environ["GOVERNOR_RESULTS_FD"]), "wb", buffering=0)
for line in jobs:
    job = json.loads(line)
    if "soft_timeout" in job:
        continue
    results.write(json.dumps({"id": job["id"], "ok": True, "result": len(job["args"][0])}).encode() + b"\n")
