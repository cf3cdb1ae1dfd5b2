"""``governor status`` for a terminal: one function per table or block of notes, all text escaped.

Every string that reaches the screen goes through ``_safe``: job ids, handlers, errors and
queue names come from Redis, which anyone who can write to it controls.
"""

from __future__ import annotations

import re
import time
from typing import Any

from governor.ops.status import FleetRecord, PoolSnapshot, StatusDocument, master_name
from governor.units import format_age, format_duration, format_size

# C0, DEL and C1 controls (ESC starts terminal sequences, CR overwrites a line), the line
# and paragraph separators, and the bidi marks, embeddings, overrides and isolates, which
# reorder what follows them on screen
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")

_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _safe(value: object) -> str:
    """``str(value)`` with control characters shown as ``\\x1b`` or ``\\u202e``.

    Job ids, handlers, error text and queue names come from Redis and from job code, which
    anyone who can write to Redis controls; printed raw, an ESC sequence could clear the
    operator's screen, retitle the terminal or rewrite what the status says."""

    def escape(m: re.Match[str]) -> str:
        char = m.group()
        if char in _NAMED:
            return _NAMED[char]
        return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"

    return _UNSAFE.sub(escape, str(value))


def _table(rows: list[list[str]]) -> str:
    """Rows as aligned columns, every cell escaped (the first row is the header)."""
    rows = [[_safe(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _ranges(numbers: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'"""
    out: list[str] = []
    for n in sorted(numbers):
        if out and n == int(out[-1].split("-")[-1]) + 1:
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ",".join(out)


def render_status(st: StatusDocument) -> str:
    """The human view of ``gather_status``; every string in it is passed through ``_safe``."""
    lines = _master(st) + _queues(st)
    if st["pools"]:
        lines += ["", _workers(st["pools"])]
        lines += [_pool_note(p) for p in st["pools"]]
    if st.get("fleet"):
        lines += ["", *_fleet(st["fleet"])]
    lines += _partitions(st) + _limits(st) + _handlers(st) + _dead(st)
    return "\n".join(lines)


def _master(st: StatusDocument) -> list[str]:
    """Which master this is (or that none runs), and Redis's error if it did not answer."""
    m = st["master"]
    if m:
        line = (f"master {m['pid']} on {_safe(m['host'])}, up {format_age(m['uptime'])}, "
                f"redis {_safe(m['redis'])}"
                + ("" if m["redis_ok"] else " (UNREACHABLE)")
                + (f", stopping ({_safe(m['stopping'])})" if m["stopping"] else ""))
    elif st.get("host"):
        line = f"no live master on host {_safe(st['host'])} in this fleet"
    else:
        line = "no master running for this config (showing what Redis holds)"
    lines = [line]
    if st.get("redis_error"):
        lines.append(f"redis: {_safe(st['redis_error'])}")
    return lines


def _queues(st: StatusDocument) -> list[str]:
    """The queues' counts, then the queues and registry entries that could not be read."""
    rows = [["QUEUE", "WAITING", "DELAYED", "ACTIVE", "DEAD", "DONE", "DONE_TOTAL", "PAUSED"]]
    unreadable = [(name, c["error"]) for name, c in st["queues"].items() if c.get("error")]
    for name, c in st["queues"].items():
        if not c.get("error"):
            counts: Any = c
            rows.append([name, *(str(counts[k]) for k in ("waiting", "delayed", "active", "dead", "done",
                                                           "done_total")),
                         "yes" if c.get("paused") else "no"])
    lines = ["", _table(rows)]
    for name, why in unreadable:
        lines.append(f"queue {_safe(name)}: UNREADABLE, skipped: {_safe(why)}")
    if st.get("unreadable_queues"):
        lines.append(f"{len(st['unreadable_queues'])} unreadable queue name(s) in the registry, skipped: "
                     + ", ".join(_safe(n) for n in st["unreadable_queues"][:20]))
    if st.get("unread_queues"):
        lines.append(f"{st['unread_queues']} more queue name(s) in the registry, not read")
    return lines


JOBS_SHOWN = 10  # of one worker's jobs in flight, listed under it (the JSON has them all)


def _workers(pools: list[PoolSnapshot]) -> str:
    """Every worker of every pool, with the job it runs."""
    rows = [["POOL", "#", "PID", "STATE", "UPTIME", "JOBS", "RSS", "JOB", "FOR"]]
    for p in pools:
        for w in p["workers"]:  # (from a record with --host: fleetshape checked what is indexed)
            job: Any = w.get("job") or {}
            jobs = w.get("jobs")
            what = f"{job['id']} {job.get('handler')}" if job else "-"
            if isinstance(jobs, list):  # several at once: the count here, each job below
                what = f"{len(jobs)}/{w.get('slots', '?')} slots busy"
            rows.append([p["queue"], str(w.get("index", "?")), str(w["pid"]), w["state"],
                         format_age(w.get("uptime")), str(w.get("jobs_done", "?")), format_size(w.get("rss")),
                         what, format_age(job.get("seconds"))])
            for j in (jobs or [])[:JOBS_SHOWN]:
                if isinstance(j, dict):
                    rows.append(["", "", "", "", "", "", "", f"  {j.get('id')} {j.get('handler')}"
                                 + (" (waits to run alone)" if j.get("waiting_alone") else ""),
                                 format_age(j.get("seconds"))])
            lb = w.get("loop_blocked")
            if isinstance(lb, dict):
                rows.append(["", "", "", "", "", "", "", f"  event loop blocked by {lb.get('job')} "
                             f"{lb.get('handler')}", format_age(lb.get("seconds"))])
            if isinstance(jobs, list) and len(jobs) > JOBS_SHOWN:
                rows.append(["", "", "", "", "", "", "", f"  ... and {len(jobs) - JOBS_SHOWN} more", ""])
    return _table(rows)


def _pool_note(p: PoolSnapshot) -> str:
    """One pool's line: live workers of desired, exits, back-off, shortfall, scaling."""
    live = sum(1 for w in p["workers"] if w["state"] in ("starting", "idle", "busy"))
    note = f"pool {_safe(p['queue'])}: {live}/{p.get('desired', '?')} workers"
    if p.get("exits"):
        note += ", exits: " + " ".join(f"{_safe(k)}={v}" for k, v in sorted(p["exits"].items()))
    b = p.get("backoff")
    if b:
        note += (f", BACKING OFF {b['seconds']:.0f}s (respawn in {b['respawn_in']:.0f}s): "
                 f"{_safe(b['last_error'])}")
    if p.get("spawn_error"):
        note += f", SHORT: {_safe(p['spawn_error'])}"
    return note + _autoscale_note(p)


def _autoscale_note(p: PoolSnapshot) -> str:
    """An elastic pool's bounds, what holds it, and its last step and why."""
    scale = p.get("autoscale")
    if not scale:
        return ""
    note = f", elastic {scale['min']}-{scale['max']}"
    if scale.get("held"):
        note += f", held: {_safe(scale['held'])}"
    last = (scale.get("history") or [None])[-1]
    if last:
        why = ", ".join(f"{_safe(k)} {_safe(v)}" for k, v in last["signals"].items())
        note += (f", last {last['direction']} {last['from']}->{last['to']} "
                 f"({_safe(last['reason'])}: {why}) {format_age(time.time() - last['at'])} ago")
    return note


def _fleet(records: list[FleetRecord]) -> list[str]:
    """One row per master in the registry (an unreadable record says so), then the totals."""
    rows = [["MASTER", "VERSION", "UP", "POOLS", "WORKERS", "BUSY", "PARTITIONS", "LEASE LEFT"]]
    total = busy_total = 0
    for rec in records:
        if rec.get("error"):
            rows.append([master_name(rec.get("id", "?")), f"UNREADABLE ({rec['error'][:100]})", "", "", "",
                         "", "", format_age(rec.get("expires_in"))])
            continue
        m: Any = rec.get("master") or {}
        pools = rec.get("pools") or []
        workers = [w for p in pools for w in p.get("workers", [])]
        busy = sum(1 for w in workers if w.get("state") == "busy")
        total, busy_total = total + len(workers), busy_total + busy
        held = sum(len(p.get("held", [])) for p in (rec.get("partitions") or {}).values())
        rows.append([f"{m.get('host', '?')}:{m.get('pid', '?')}", str(m.get("version", "?")),
                     format_age(m.get("uptime")),
                     " ".join(f"{p['queue']}={p.get('actual', '?')}/{p.get('desired', '?')}" for p in pools) or "-",
                     str(len(workers)), str(busy), str(held), format_age(rec.get("expires_in"))])
    return [_table(rows), f"fleet: {len(records)} master(s), {total} worker(s), {busy_total} busy"]


def _partitions(st: StatusDocument) -> list[str]:
    """Who holds which partitions of each partitioned queue, and which no master holds."""
    parted = [(q, c["partitions"]) for q, c in st["queues"].items() if c.get("partitions")]
    if not parted:
        return []
    lines = [""]
    for q, parts in parted:
        held = "; ".join(f"{_safe(m)} holds {_ranges(ps)}" for m, ps in sorted(parts["holders"].items()))
        unheld = f"; UNHELD: {_ranges(parts['unheld'])}" if parts["unheld"] else ""
        lines.append(f"partitions {_safe(q)}: {parts['count']}; {held or 'none held'}{unheld}")
        error = st.get("partitions", {}).get(q, {}).get("error")
        if error:
            lines.append(f"  this master serves none: {_safe(error)}")
    return lines


def _limits(st: StatusDocument) -> list[str]:
    """What each limited queue's rate limits have left, its running cap, and its throttling."""
    limited = [(q, c) for q, c in st["queues"].items()
               if c.get("limits") or c.get("global_concurrency") or c.get("throttled_total")]
    if not limited:
        return []
    lines = [""]
    for q, c in limited:
        parts = []
        for lim in c.get("limits", []):
            spec = f"{lim['algorithm']} {lim['limit']}/{format_duration(lim['per'])}"
            left = (f"{lim['tokens']}/{lim['burst']} tokens" if "tokens" in lim
                    else f"{lim['used']}/{lim['limit']} used")
            parts.append(f"{spec}: {left}")
        if c.get("global_concurrency"):
            parts.append(f"running {c['active']}/{c['global_concurrency']} (global_concurrency)")
        parts.append(f"throttled {c.get('throttled_total', 0)} reserves, "
                     f"{c.get('throttled_jobs_total', 0)} jobs")
        lines.append(f"limits {_safe(q)}: " + "; ".join(parts))
    return lines


def _handlers(st: StatusDocument) -> list[str]:
    """Each handler's counts, run-time percentiles, hard limit and failures by reason."""
    handlers = [(q, h, t) for q, hs in st.get("handlers", {}).items() for h, t in sorted(hs.items())]
    if not handlers:
        return []
    rows = [["QUEUE", "HANDLER", "DONE", "FAILED", "DEAD", "P50", "P95", "P99", "HARD LIMIT", "FAILURES"]]
    for q, h, figures in handlers:
        t: Any = figures
        if t["fallback"]:
            limit = f"{format_duration(t['configured'])} (FALLEN BACK: {t['kills']} adaptive kills)"
        elif t["limit"]:
            limit = f"{format_duration(t['limit'])} (learnt)"
        else:
            limit = format_duration(t["configured"]) + (" (too few runs)" if t["adaptive"] else "")
        failures = " ".join(f"{k}={v}" for k, v in sorted(t["reasons"].items())) or "-"
        rows.append([q, h, str(t["done"]), str(t["failed"]), str(t["dead"]),
                     *(f"{t[p]:.3f}s" if t["samples"] else "-" for p in ("p50", "p95", "p99")), limit, failures])
    return ["", _table(rows)]


def _dead(st: StatusDocument) -> list[str]:
    """Each queue's newest dead jobs with the first line of their last error."""
    dead = [(q, d) for q, c in st["queues"].items() for d in c.get("recent_dead", [])]
    if not dead:
        return []
    rows = [["DEAD IN", "JOB", "HANDLER", "REASON", "ATTEMPTS", "LAST ERROR"]]
    for q, d in dead:
        # the first line by "\n" only: a CR or other separator inside it is shown, escaped
        err = str(d["error"]).split("\n", 1)[0][:80] if d["error"] else "-"
        rows.append([q, str(d["id"]), str(d["handler"]), str(d["reason"]), str(d["attempts"]), err])
    return ["", _table(rows)]
