"""The converters from a YAML value to a setting's value: each raises ValueError with a
message that names what was expected and what was got (the section adds the path)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from governor.config.sections import _did_you_mean
from governor.units import parse_duration, parse_size

RATE_LIMIT_ALGORITHMS = ("token_bucket", "sliding_window", "fixed_window")

_PER_WORDS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}


def _int(minimum: int) -> Callable[[Any], int]:
    def parse(v: Any) -> int:
        if isinstance(v, bool):
            raise ValueError(f"expected an integer >= {minimum}, got {v!r}")
        if isinstance(v, str) and re.fullmatch(r"\s*-?\d+\s*", v):
            v = int(v)
        if not isinstance(v, int) or v < minimum:
            raise ValueError(f"expected an integer >= {minimum}, got {v!r}")
        return v

    parse.kind = f"integer >= {minimum}"  # type: ignore[attr-defined]
    return parse


def _optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``off``/``false``/``none`` disable a limit; anything else goes to ``parse`` and must be
    above zero (a zero limit would read as "kill at once" but act as "no limit")."""

    def wrapped(v: Any) -> Any:
        if v is False or (isinstance(v, str) and v.strip().lower() in ("off", "none", "false", "no")):
            return None
        value = parse(v)
        if not value:
            raise ValueError(f"expected a limit above zero, or 'off' to disable it, got {v!r}")
        return value

    wrapped.kind = f"{kind(parse)}, or off"  # type: ignore[attr-defined]
    return wrapped


def _fraction(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
        raise ValueError(f"expected a number between 0 and 1, got {v!r}")
    return float(v)


def _choice(*options: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        if not isinstance(v, str) or v.lower() not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {v!r}")
        return v.lower()

    parse.kind = " | ".join(options)  # type: ignore[attr-defined]
    return parse


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {v!r}")
    return v


def _string(v: Any) -> str:
    if not isinstance(v, (str, int, float)) or isinstance(v, bool):
        raise ValueError(f"expected a string, got {v!r}")
    return str(v)


def _string_list(v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
        raise ValueError(f"expected a list of strings, got {v!r}")
    return tuple(v)


def _handler_patterns(v: Any) -> tuple[str, ...]:
    patterns = _string_list(v)
    for p in patterns:
        if ":" not in p:
            raise ValueError(f"expected 'module:function' patterns such as 'myapp.tasks:*', got {p!r}")
    return patterns


def _account(kind: str) -> Callable[[Any], str]:
    """A user or group name that exists on this host (checked at `governor check` time)."""
    import grp
    import pwd

    lookup = pwd.getpwnam if kind == "user" else grp.getgrnam

    def parse(v: Any) -> str:
        name = _string(v)
        try:
            lookup(name)
        except KeyError:
            raise ValueError(f"no such {kind} {name!r} on this host") from None
        return name

    parse.kind = f"{kind} name"  # type: ignore[attr-defined]
    return parse


_user, _group = _account("user"), _account("group")


def _existing_file(base_dir: Path) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        path = (base_dir / _string(v)).resolve()
        if not path.is_file():
            raise ValueError(f"no such file: {str(path)!r}")
        return str(path)

    parse.kind = "file (relative to the config file)"  # type: ignore[attr-defined]
    return parse


def _listen(v: Any) -> str:
    v = _string(v)
    host, sep, port = v.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:9808, got {v!r}")
    return v


def _per(v: Any) -> float:
    """A rate limit's period: a duration, or ``second``/``minute``/``hour``/``day``. At least
    1ms, because the limits are kept in Redis in milliseconds: a shorter period would round
    to zero there and divide by it."""
    if isinstance(v, str) and v.strip().lower() in _PER_WORDS:
        return _PER_WORDS[v.strip().lower()]
    negative = (isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0) or (
        isinstance(v, str) and v.strip().startswith("-"))
    if negative:
        raise ValueError(f"expected a duration above zero, got {v!r}")
    try:
        seconds = parse_duration(v)
    except ValueError:
        raise ValueError("expected a duration such as 1s, 1m, 1h or 1d (units ms/s/m/h/d, or the words "
                         f"second, minute, hour, day), got {v!r}") from None
    if seconds == 0:
        raise ValueError(f"expected a duration above zero, got {v!r}")
    if seconds < 0.001:
        raise ValueError(f"expected at least 1ms, got {v!r}")
    return seconds


def _algorithm(v: Any) -> str:
    if isinstance(v, str) and v.strip().lower() in RATE_LIMIT_ALGORITHMS:
        return v.strip().lower()
    hint = _did_you_mean(v, RATE_LIMIT_ALGORITHMS) if isinstance(v, str) else ""
    raise ValueError(f"unknown algorithm {v!r}{hint} (known: {', '.join(RATE_LIMIT_ALGORITHMS)})")


def _positive_duration(v: Any) -> float:
    d = parse_duration(v)
    if d <= 0:
        raise ValueError(f"expected a duration above zero, got {v!r}")
    return d


def _percent(what: str, open_range: bool = False) -> Callable[[Any], float]:
    """A percentage: 95, 95% or '95%'; strictly between 0 and 100 with ``open_range``."""

    def parse(v: Any) -> float:
        x = v
        if isinstance(x, str) and x.strip().endswith("%"):
            x = x.strip()[:-1]
        try:
            if isinstance(x, bool):
                raise ValueError
            x = float(x)
        except (TypeError, ValueError):
            raise ValueError(f"expected {what} such as 95 or 95%, got {v!r}") from None
        ok = 0 < x < 100 if open_range else 0 < x <= 100
        if not ok or x != x:
            span = "between 0 and 100 (both excluded)" if open_range else "above 0 and at most 100"
            raise ValueError(f"expected {what} {span}, got {v!r}")
        return x

    parse.kind = "percentage (95 or 95%)"  # type: ignore[attr-defined]
    return parse


def _number_at_least(low: float, what: str) -> Callable[[Any], float]:
    def parse(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= low or v == float("inf"):
            raise ValueError(f"expected {what} as a number >= {low:g}, got {v!r}")
        return float(v)

    parse.kind = f"number >= {low:g}"  # type: ignore[attr-defined]
    return parse


def _signal_name(v: Any) -> int:
    import signal

    name = _string(v).upper()
    name = name if name.startswith("SIG") else f"SIG{name}"
    if name in ("SIGKILL", "SIGSTOP") or not hasattr(signal, name) or not isinstance(getattr(signal, name), signal.Signals):
        raise ValueError(f"expected a signal a program can handle, such as TERM, INT, QUIT or HUP, got {v!r}")
    return int(getattr(signal, name))


def signal_name(number: int) -> str:
    import signal

    return signal.Signals(number).name[3:]


def _token(v: Any) -> str | None:
    """web.token: empty (e.g. an unset ${VAR:-}) means read-only; else 16 printable characters
    at least, so it cannot be guessed in the time a master answers requests."""
    text = _string(v).strip()
    if not text:
        return None
    if len(text) < 16 or not text.isprintable() or " " in text:
        raise ValueError("expected at least 16 printable characters without spaces (e.g. from "
                         "`openssl rand -hex 16`), or empty for a read-only page")
    return text


_HOST_NAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


def _host_names(v: Any) -> tuple[str, ...]:
    """web.hosts: DNS names (lower-cased, without a trailing dot) the page may be reached by."""
    names = tuple(n.strip().lower().rstrip(".") for n in _string_list(v))
    bad = [n for n in names if not _HOST_NAME.match(n)]
    if bad:
        raise ValueError(f"expected host names such as governor.example.org (no port, no scheme, no "
                         f"wildcard), got {bad[0]!r}")
    return names


_KINDS: dict[Callable[[Any], Any], str] = {
    parse_duration: "duration (ms/s/m/h/d)", parse_size: "size (B/KiB/MiB/GiB/KB/MB/GB)",
    _fraction: "number from 0 to 1", _bool: "true or false", _string: "string",
    _string_list: "list of strings", _handler_patterns: "list of module:function patterns",
    _listen: "HOST:PORT", _per: "duration, or second/minute/hour/day",
    _algorithm: " | ".join(RATE_LIMIT_ALGORITHMS), _positive_duration: "duration above zero",
    _signal_name: "signal name (TERM, INT, ...)", _token: "string of 16+ characters, or empty",
    _host_names: "list of host names",
}


def kind(parse: Callable[[Any], Any]) -> str:
    """What a converter accepts, in words, for docs/configuration.md."""
    return getattr(parse, "kind", None) or _KINDS.get(parse, "")
