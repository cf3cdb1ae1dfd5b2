"""The Python side of the PHP client's tests: what governor's own Client (and Python itself) say
for the same input, so the PHP client's messages, payloads and records are compared with
Python's on every run and cannot drift.

Reads one JSON request on stdin, writes one JSON answer on stdout. Floats travel as
{"$f": "<16 hex digits of the IEEE double, big-endian>"} (so NaN, infinities and -0.0 do too),
and the PHP names of a job's fields (maxRetries, jobId) are Python's (max_retries, job_id).

Requests (each answer has one entry per case or value):
  {"op": "enqueue_many", "url": ..., "cases": [{"prefix", "queue", "jobs", "partitions"?, "max_payload"?}]}
      -> [{"ids": [...]} or {"error": message, "type": "ValueError"}]
  {"op": "client", "url": ..., "cases": [{"prefix", "partitions"}]} -> Client.from_url's error or null
  {"op": "partition_of", "cases": [[key, n]]} -> [partition_of(key, n)]
  {"op": "repr", "values": [...]} -> [repr(v)]
  {"op": "dumps", "values": [...]} -> [{"json": ...} or {"error": ...}]
  {"op": "job", "url", "prefix", "id", "queue"?} -> Client.job's record (floats as above)
  {"op": "counts", "url", "prefix", "queue"} -> Client.counts
  {"op": "load_library", "url"}: FUNCTION LOAD the library, as a master does at its start
"""

from __future__ import annotations

import json
import struct
import sys
from typing import Any

import redis

from governor import Client
from governor.protocol.records import partition_of
from governor.protocol.scripts import load_library

NAMES = {"maxRetries": "max_retries", "jobId": "job_id"}


def revive(v: Any) -> Any:
    if isinstance(v, dict):
        if set(v) == {"$f"}:
            return struct.unpack(">d", bytes.fromhex(v["$f"]))[0]
        return {k: revive(x) for k, x in v.items()}
    if isinstance(v, list):
        return [revive(x) for x in v]
    return v


def pack(v: Any) -> Any:
    if isinstance(v, float):
        return {"$f": struct.pack(">d", v).hex()}
    if isinstance(v, dict):
        return {k: pack(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [pack(x) for x in v]
    return v


def python_spec(spec: Any) -> Any:
    return {NAMES.get(k, k): x for k, x in spec.items()} if isinstance(spec, dict) else spec


def enqueue_many(url: str, case: dict[str, Any]) -> dict[str, Any]:
    try:
        client = Client.from_url(url, prefix=case["prefix"], partitions=case.get("partitions"),
                                 **({"max_payload": case["max_payload"]} if "max_payload" in case else {}))
        return {"ids": client.enqueue_many(case["queue"], [python_spec(s) for s in case["jobs"]])}
    except ValueError as exc:
        return {"error": str(exc), "type": type(exc).__name__}


def client(url: str, case: dict[str, Any]) -> str | None:
    try:
        Client.from_url(url, prefix=case["prefix"], partitions=case.get("partitions"))
    except ValueError as exc:
        return str(exc)
    return None


def dumps(v: Any) -> dict[str, str]:
    try:
        return {"json": json.dumps(v, separators=(",", ":"), allow_nan=False)}
    except (TypeError, ValueError) as exc:
        return {"error": str(exc)}


def main() -> None:
    req = revive(json.load(sys.stdin))
    op = req["op"]
    if op == "enqueue_many":
        out: Any = [enqueue_many(req["url"], case) for case in req["cases"]]
    elif op == "client":
        out = [client(req["url"], case) for case in req["cases"]]
    elif op == "partition_of":
        out = [partition_of(key, n) for key, n in req["cases"]]
    elif op == "repr":
        out = [repr(v) for v in req["values"]]
    elif op == "dumps":
        out = [dumps(v) for v in req["values"]]
    elif op == "job":
        out = Client.from_url(req["url"], prefix=req["prefix"]).job(req["id"], req.get("queue"))
    elif op == "load_library":  # what a master does at its start
        load_library(redis.Redis.from_url(req["url"]))
        out = None
    elif op == "counts":
        out = Client.from_url(req["url"], prefix=req["prefix"]).counts(req["queue"])
    else:
        raise SystemExit(f"unknown op {op!r}")
    json.dump(pack(out), sys.stdout)


if __name__ == "__main__":
    main()
