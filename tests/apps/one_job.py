"""A jsonl program that serves one job per life (as a PHP worker with a request limit does):
it answers, lingers (argv[1] seconds: the worker writes the next job into the pipe
meanwhile, unread) and exits. A "t:die" job it reads and then dies on (tests/test_commands.py)."""

import json
import os
import sys
import time

jobs = os.fdopen(int(os.environ["GOVERNOR_JOBS_FD"]), "rb")
results = os.fdopen(int(os.environ["GOVERNOR_RESULTS_FD"]), "wb", buffering=0)
job = json.loads(jobs.readline())
if job["handler"] == "t:die":
    sys.exit(3)
results.write(json.dumps({"id": job["id"], "ok": True, "result": job["args"][0]}).encode() + b"\n")
time.sleep(float(sys.argv[1]))
