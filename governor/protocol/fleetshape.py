"""The shape a master's fleet record must have before anything renders it.

Any Redis client can write the records hash, so a record is untrusted input: ``status``, its
``--host`` view and the web page index into it (a pool's workers, a worker's job, a handler's
figures). A record that decodes but has another shape (``{"master": "str", "pools": [7]}``) is
refused here, where it is read, with the path of the first field that is wrong; the caller
shows it as unreadable and the rest of the fleet as usual. Only the fields readers use are
checked, and only those they index without a default are required; extra ones pass (a
newer master may write more)."""

from __future__ import annotations

from typing import Any

NUM = (int, float)
NONE = type(None)
Spec = Any  # a type, a tuple of types/specs, a dict (object: "?" marks an optional key), a list [item spec]


def _opt(*spec: Spec) -> tuple[Spec, ...]:
    return (*spec, NONE)


JOB = {"id": str, "?handler": _opt(str), "?seconds": _opt(*NUM), "?attempt": _opt(int), "?partition": _opt(int),
       "?waiting_alone": bool}
WORKER = {"pid": int, "state": str, "?index": int, "?uptime": NUM, "?jobs_done": int, "?rss": _opt(int),
          "?job": _opt(JOB), "?slots": int, "?jobs": [JOB],
          "?loop_blocked": {"seconds": NUM, "job": _opt(str), "handler": _opt(str)}}
DECISION = {"at": NUM, "direction": str, "from": int, "to": int, "reason": str, "signals": {"*": (str, *NUM, NONE)}}
POOL = {"queue": str, "workers": [WORKER], "?desired": int, "?actual": int,
        "?backoff": _opt({"seconds": NUM, "respawn_in": NUM, "last_error": _opt(str)}),
        "?spawn_error": _opt(str), "?exits": {"*": int},
        "?autoscale": _opt({"min": int, "max": int, "?held": _opt(str), "?history": [DECISION]})}
MASTER = {"host": str, "pid": int, "?uptime": NUM, "?version": _opt(str), "?config": _opt(str),
          "?redis": _opt(str), "?redis_ok": bool, "?stopping": _opt(str), "?started": _opt(*NUM)}
FIGURES = {"done": int, "failed": int, "dead": int, "reasons": {"*": int}, "samples": int, "p50": NUM,
           "p95": NUM, "p99": NUM, "limit": _opt(*NUM), "configured": _opt(*NUM), "adaptive": bool,
           "?kills": int, "?fallback": bool}
RECORD = {"master": MASTER, "pools": [POOL], "?partitions": {"*": {"?held": [int]}},
          "?handlers": {"*": {"*": FIGURES}}}


def problem(value: Any, spec: Spec = RECORD, path: str = "record") -> str | None:
    """None if ``value`` has the shape ``spec`` says, else where and how it differs."""
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            return f"{path}: expected an object, got {type(value).__name__}"
        if "*" in spec:  # a map: every value has one shape
            for k, v in value.items():
                why = problem(v, spec["*"], f"{path}.{str(k)[:40]}")
                if why:
                    return why
            return None
        for key, sub in spec.items():
            name = key.lstrip("?")
            if name not in value:
                if key.startswith("?"):
                    continue
                return f"{path}.{name}: missing"
            why = problem(value[name], sub, f"{path}.{name}")
            if why:
                return why
        return None
    if isinstance(spec, list):
        if not isinstance(value, list):
            return f"{path}: expected a list, got {type(value).__name__}"
        for i, item in enumerate(value):
            why = problem(item, spec[0], f"{path}[{i}]")
            if why:
                return why
        return None
    options = spec if isinstance(spec, tuple) else (spec,)
    for option in options:
        if isinstance(option, (dict, list)):
            if problem(value, option, path) is None:
                return None
        elif isinstance(value, option) and not (isinstance(value, bool) and option in (int, float)):
            return None
    if len(options) == 1 and isinstance(options[0], (dict, list)):
        return problem(value, options[0], path)
    for option in options:  # the nested explanation of the one structured option the value resembles
        if isinstance(option, dict) and isinstance(value, dict):
            return problem(value, option, path)
    return f"{path}: unexpected {type(value).__name__}"
