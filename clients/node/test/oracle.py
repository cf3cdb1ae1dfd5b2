"""The Python Client's answers for governor-client's Node tests: reads a request as JSON on
stdin and writes one answer per case as JSON on stdout, so the Node client is compared with
governor's own code (messages, payload and record bytes, partitions, records, counts), never
with a copy of it that could drift.

Numbers JSON cannot carry come as {"$float": "nan" | "inf" | "-inf"}; a job's fields as the
Node client spells them (maxRetries, jobId) are renamed to Python's.
"""

import json
import sys

import redis

from governor import Client
from governor.protocol.records import partition_of
from governor.protocol.scripts import load_library
from governor.units import parse_duration

RENAMED = {"maxRetries": "max_retries", "jobId": "job_id"}


def revive(obj):
    if set(obj) == {"$float"}:
        return float(obj["$float"])
    return obj


def spec(job):
    return {RENAMED.get(k, k): v for k, v in job.items()} if isinstance(job, dict) else job


def client(request, case):
    options = {"prefix": case.get("prefix", "governor")}
    if "maxPayload" in case:
        options["max_payload"] = case["maxPayload"]
    if "partitions" in case:
        options["partitions"] = case["partitions"]
    return Client.from_url(request.get("url", "redis://127.0.0.1:1/0"), **options)


def answer(request, case):
    op = case["op"]
    if op == "repr":
        return repr(case["value"])
    if op == "dumps":
        return json.dumps(case["value"], separators=(",", ":"), allow_nan=False)
    if op == "duration":
        return parse_duration(case["value"])
    if op == "partition":
        return [partition_of(key, case["n"]) for key in case["keys"]]
    c = client(request, case)
    if op == "client":
        return None
    if op == "prepare":
        job_id, payload, meta, delay_ms, key = c._prepare(case["queue"], spec(case["job"]))
        return {"id": job_id, "payload": payload, "meta": meta, "delayMs": delay_ms, "key": key}
    if op == "enqueueMany":
        return c.enqueue_many(case["queue"], [spec(j) for j in case["jobs"]])
    if op == "job":
        return c.job(case["id"], case.get("queue"))
    if op == "counts":
        return c.counts(case["queue"])
    raise ValueError(f"oracle: unknown op {op!r}")


def main():
    request = json.loads(sys.stdin.read(), object_hook=revive)
    if request.get("loadLibrary"):
        load_library(redis.Redis.from_url(request["url"]))
    answers = []
    for case in request["cases"]:
        try:
            answers.append({"ok": answer(request, case)})
        except ValueError as exc:
            answers.append({"error": str(exc)})
        except Exception as exc:  # (not a ValueError: no message to compare)
            answers.append({"exception": f"{type(exc).__name__}: {exc}"})
    sys.stdout.write(json.dumps(answers))


if __name__ == "__main__":
    main()
