"""A queue's own keys: its size (a count or an elastic ``{min, max}`` with ``autoscale``),
a command pool's program, its rate limits and limiters, and its partitions."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from governor.config.declare import keys, read
from governor.config.schema import Autoscale, QueueConfig, RateLimit
from governor.config.sections import ConfigError, _did_you_mean, _Section, _show
from governor.config.values import (
    _algorithm,
    _choice,
    _int,
    _optional,
    _per,
    _signal_name,
    _string,
)
from governor.names import LIMITER_NAME_RULE, queue_name_problem
from governor.units import format_duration

_PER_QUEUE_KEYS = ("rate_limit", "limiters", "global_concurrency", "partitions",
                   "partitions_per_host")  # never inherited from defaults
MAX_PARTITIONS = 1024
_LIMIT_EXAMPLE = "{limit: 300, per: 1m}"


def _rate_limit(data: Any, path: str, env: Mapping[str, str]) -> RateLimit:
    if not isinstance(data, dict):
        raise ConfigError(path, f"expected a limit such as {_LIMIT_EXAMPLE}, got {_show(data)}")
    sec = _Section(data, path, env).expect("limit", "per", "algorithm", "burst")
    limit = sec.get("limit", _int(1))
    per = sec.get("per", _per)
    algorithm = sec.get("algorithm", _algorithm, RateLimit.algorithm)
    burst = sec.get("burst", _int(1))
    sec.done()
    for key, value in (("limit", limit), ("per", per)):
        if value is None:
            raise ConfigError(path, f"missing {key!r}: a limit is {{limit: N, per: DURATION}}, e.g. {_LIMIT_EXAMPLE}")
    if burst is not None and algorithm != "token_bucket":
        raise ConfigError(sec.sub("burst"), f"only token_bucket takes a burst (got burst {burst} "
                                            f"with algorithm {algorithm})")
    return RateLimit(limit=limit, per=per, algorithm=algorithm, burst=1 if burst is None else burst)


def _rate_limits(raw: Any, path: str, env: Mapping[str, str]) -> tuple[RateLimit, ...]:
    """One limit mapping or a non-empty list of them (a job starts only when all allow it)."""
    if isinstance(raw, dict):
        return (_rate_limit(raw, path, env),)
    if isinstance(raw, list):
        if not raw:
            raise ConfigError(path, "expected at least one limit, got an empty list (leave the key out for none)")
        return tuple(_rate_limit(item, f"{path}[{i}]", env) for i, item in enumerate(raw))
    raise ConfigError(path, f"expected a limit such as {_LIMIT_EXAMPLE} or a list of them, got {_show(raw)}")


def _limiter_names(raw: Any, path: str, known: Mapping[str, Any]) -> tuple[str, ...]:
    """A queue's ``limiters:``, one name or a list, each defined in the top-level ``limiters:``."""
    if isinstance(raw, str):
        items = [(path, raw)]
    elif isinstance(raw, list):
        items = [(f"{path}[{i}]", v) for i, v in enumerate(raw)]
    else:
        raise ConfigError(path, f"expected a limiter name or a list of them, got {_show(raw)}")
    names: list[str] = []
    for where, name in items:
        if not isinstance(name, str) or not name:
            raise ConfigError(where, f"expected a limiter name, got {_show(name)}")
        if name not in known:
            defined = f"known: {', '.join(known)}" if known else "none are defined: add a top-level limiters: mapping"
            raise ConfigError(where, f"no limiter {name!r} in limiters ({defined}){_did_you_mean(name, known)}")
        if name in names:
            raise ConfigError(where, f"limiter {name!r} is listed twice")
        names.append(name)
    return tuple(names)


def _queue_limits(q: _Section, named: Mapping[str, Any]) -> tuple[tuple[RateLimit, ...], tuple[str, ...], int | None]:
    """A queue's own ``rate_limit``, ``limiters`` and ``global_concurrency`` (``off`` for none)."""
    rate_limits = q.get("rate_limit", lambda v: _rate_limits(v, q.sub("rate_limit"), q.env), ())
    limiters = q.get("limiters", lambda v: _limiter_names(v, q.sub("limiters"), named), ())
    global_concurrency = q.get("global_concurrency", _optional(_int(1)), None)
    return rate_limits, limiters, global_concurrency


def _partitioning(q: _Section, limited: bool) -> tuple[int | None, int | None]:
    """``partitions`` and ``partitions_per_host``. A partitioned queue lives in one hash tag per
    partition, so a fleet-wide limit (one counter in one slot) cannot see all of its starts."""
    partitions = q.get("partitions", _optional(_int(1)), None)
    per_host = q.get("partitions_per_host", _optional(_int(1)), None)
    if partitions is not None and partitions > MAX_PARTITIONS:
        raise ConfigError(q.sub("partitions"), f"expected at most {MAX_PARTITIONS}, got {partitions}")
    if per_host is not None and partitions is None:
        raise ConfigError(q.sub("partitions_per_host"), "only a partitioned queue (partitions: N) has "
                                                        "partitions to lease")
    if partitions is not None and limited:
        raise ConfigError(q.sub("partitions"), "a partitioned queue cannot have rate_limit, limiters or "
                                               "global_concurrency: its jobs live in one Redis slot per "
                                               "partition and a fleet-wide limit lives in one (use "
                                               "governor.limit(name) in the handler instead)")
    return partitions, per_host


_COMMAND_KEYS = ("command", "env", "cwd", "stop_signal", "protocol")


def _command(q: _Section, base_dir: Path) -> dict[str, Any]:
    """A command pool's keys: ``command`` (a list, or a string split as a shell would, without
    running one), ``env``, ``cwd`` (relative to the config file), ``stop_signal``, ``protocol``."""
    import shlex

    raw = q.get("command", lambda v: v, None)
    if raw is None:
        for key in _COMMAND_KEYS[1:]:
            if key in q.data:
                raise ConfigError(q.sub(key), f"{key} applies to a command pool: set command: [program, args...] too")
        return {}
    if isinstance(raw, str):
        try:
            raw = shlex.split(raw)
        except ValueError as exc:
            raise ConfigError(q.sub("command"), f"cannot split {raw!r}: {exc}") from None
    if not isinstance(raw, list) or not raw or not all(
            isinstance(a, (str, int, float)) and not isinstance(a, bool) for a in raw):
        raise ConfigError(q.sub("command"), f"expected a non-empty list such as [node, worker.js], got {raw!r}")
    command = [str(a) for a in raw]
    if not command[0]:
        raise ConfigError(q.sub("command"), "the program is an empty string")
    env_raw = q.get("env", lambda v: v, {}) or {}
    if not isinstance(env_raw, dict) or not all(isinstance(k, str) and k and "=" not in k for k in env_raw):
        raise ConfigError(q.sub("env"), f"expected a mapping of variable names to values, got {env_raw!r}")
    env = tuple(sorted((k, "" if v is None else str(v)) for k, v in env_raw.items()))
    cwd = q.get("cwd", _string, None)
    protocol = q.get("protocol", _choice("jsonl"), None)
    # (relative to the config file, as app.path is; by default its directory)
    return {"command": tuple(command), "env": env, "cwd": str((base_dir / (cwd or ".")).resolve()),
            "stop_signal": q.get("stop_signal", _signal_name, QueueConfig.stop_signal), "protocol": protocol}


def command_problem(q: QueueConfig) -> str | None:
    """Why a command pool's program cannot start, where that can be told before it runs (a
    missing or non-executable file); None if it looks runnable. ``check`` reports it; ``run``
    does not refuse (the program may be installed later): the pool backs off with the error."""
    import shutil

    if not q.command:
        return None
    program = q.command[0]
    path_var = dict(q.env).get("PATH", os.environ.get("PATH", ""))
    if "/" in program:
        full = program if os.path.isabs(program) else os.path.join(q.cwd or os.getcwd(), program)
        if not os.path.exists(full):
            return f"{program}: no such file"
        if not os.access(full, os.X_OK) or os.path.isdir(full):
            return f"{program}: not an executable file"
        return None
    if shutil.which(program, path=path_var) is None:
        return f"{program}: not found on PATH"
    return None


_AUTOSCALE_KEYS = tuple(k for k in keys(Autoscale) if k not in ("min", "max"))  # (min, max: concurrency)


def _elastic(q: _Section) -> tuple[int, Autoscale | None]:
    """A queue's ``concurrency`` (a count, or ``{min, max}``) and ``autoscale``: the count
    to size it by (an elastic pool's max) and its thresholds, if elastic."""
    raw = q.data.get("concurrency")
    if not isinstance(raw, dict):
        if "autoscale" in q.data:
            raise ConfigError(q.sub("autoscale"), "an elastic pool needs concurrency: {min: N, max: M}")
        return q.get("concurrency", _int(0), 1), None
    c = q.section("concurrency").expect("min", "max")
    low = c.get("min", _int(0), None)
    high = c.get("max", _int(1), None)
    c.done()
    if low is None or high is None:
        raise ConfigError(c.sub("min" if low is None else "max"), "an elastic pool needs both min and max")
    if low > high:
        raise ConfigError(c.path, f"min ({low}) is above max ({high})")
    a = q.section("autoscale").expect(*_AUTOSCALE_KEYS)
    scale = Autoscale(**read(Autoscale, a, Autoscale(min=low, max=high)), min=low, max=high)
    for key in ("down_idle", "up_cooldown", "down_cooldown"):
        if getattr(scale, key) < 0:
            raise ConfigError(a.sub(key), f"expected a duration >= 0, got {format_duration(getattr(scale, key))}")
    a.done()
    if scale.up_wait is None and scale.up_depth is None:
        raise ConfigError(a.path, "up_wait and up_depth are both off: nothing would ever scale the pool up")
    return high, scale


def _named_limiters(raw: Any, env: Mapping[str, str]) -> dict[str, tuple[RateLimit, ...]]:
    """The top-level ``limiters:``: name -> limits, shared by queues and ``governor.limit()``."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError("limiters", "expected a mapping of limiter name to limits, e.g. "
                                      f"{{stripe: {_LIMIT_EXAMPLE}}}, got {_show(raw)}")
    out: dict[str, tuple[RateLimit, ...]] = {}
    for name, body in raw.items():
        path = f"limiters.{name}"
        if queue_name_problem(name):
            raise ConfigError(path, LIMITER_NAME_RULE)
        out[name] = _rate_limits(body, path, env)
    return out
