"""The YAML file, turned into frozen dataclasses or a ConfigError naming the path.

Why so strict: an operator who types ``concurency: 8`` must hear about it at
``governor check`` time, not discover at 3 a.m. that the queue ran with one
worker. Every error therefore carries the dotted path and the bad value.
The result is immutable, so a reload is "parse a whole new Config, compare,
apply" and a bad file can never leave a half-applied config behind.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from governor import redisurl
from governor.names import LIMITER_NAME_RULE, queue_name_problem
from governor.units import format_duration, format_size, parse_duration, parse_size


class ConfigError(ValueError):
    """A configuration problem; ``str()`` names the path, e.g. ``queues.email.concurrency: ...``."""

    def __init__(self, path: str, message: str, source: str | None = None) -> None:
        self.path = path
        self.message = message
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{path}: {message}" if path else f"{where}{message}")


@dataclass(frozen=True)
class MemoryLimits:
    soft: int | None = 512 * 1024**2
    hard: int | None = 1024**3
    measure: str = "rss"  # rss | uss | pss: what confirms a limit crossed on RSS
    interval: float = 0.5  # seconds between the master's samples of each worker
    rlimit: bool = False  # also set RLIMIT_AS = hard in the worker (a second line of defence)


@dataclass(frozen=True)
class AdaptiveTimeout:
    """``timeout.adaptive``: the hard limit learnt from the handler's own successful runs,
    fleet-wide: clamp(p<percentile> * factor, min, max) once ``samples`` runs are known."""

    percentile: float = 95.0
    factor: float = 3.0
    min: float = 5.0
    max: float = 600.0
    samples: int = 50
    max_kills: int = 3  # adaptive kills of one handler within `window` that make it fall
    window: float = 600.0  # back to the configured limit (until they age out of the window)


@dataclass(frozen=True)
class TimeoutLimits:
    soft: float | None = 50.0
    hard: float | None = 60.0
    adaptive: AdaptiveTimeout | None = None


@dataclass(frozen=True)
class RecyclePolicy:
    max_jobs: int | None = 1000
    max_age: float | None = 4 * 3600.0
    jitter: float = 0.1
    max_concurrent: int | None = None  # None: a quarter of the pool, at least 1


@dataclass(frozen=True)
class RetryPolicy:
    max: int = 3
    backoff: float = 2.0
    max_backoff: float = 600.0


@dataclass(frozen=True)
class Autoscale:
    """An elastic pool (``concurrency: {min, max}`` and ``autoscale:``): up on the oldest
    waiting job's age or the depth per worker, down by retiring workers idle this long."""

    min: int
    max: int
    up_wait: float | None = 5.0  # the oldest waiting job has waited longer than this
    up_depth: int | None = 100  # more than this many jobs wait per worker
    down_idle: float = 60.0
    up_cooldown: float = 10.0
    down_cooldown: float = 120.0


@dataclass(frozen=True)
class HostGuards:
    """``host:``: what every step up on this host must leave free (psutil's readings)."""

    min_available_memory: int | None = None
    max_cpu: float | None = None  # % of all cores busy over the last 10 s


@dataclass(frozen=True)
class QueueSettings:
    """What a queue inherits from ``defaults``; a change here restarts its workers on reload."""

    memory: MemoryLimits = field(default_factory=MemoryLimits)
    timeout: TimeoutLimits = field(default_factory=TimeoutLimits)
    recycle: RecyclePolicy = field(default_factory=RecyclePolicy)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    done_ttl: float = 3600.0


RATE_LIMIT_ALGORITHMS = ("token_bucket", "sliding_window", "fixed_window")


@dataclass(frozen=True)
class RateLimit:
    """A cap on job starts, enforced fleet-wide in the reserve script (not in any one host)."""

    limit: int  # starts allowed per `per`; >= 1
    per: float  # seconds; > 0
    algorithm: str = "token_bucket"  # token_bucket | sliding_window | fixed_window
    burst: int = 1  # token_bucket only; >= 1


@dataclass(frozen=True)
class QueueConfig:
    name: str
    concurrency: int
    settings: QueueSettings
    user: str | None = None  # run this queue's workers as this user (master started as root)
    group: str | None = None
    rate_limits: tuple[RateLimit, ...] = ()  # a job starts only when every one allows it
    limiters: tuple[str, ...] = ()  # named limiters (Config.limiters) its starts also count against
    global_concurrency: int | None = None  # at most this many of its jobs running, fleet-wide
    partitions: int | None = None  # per-key ordered: jobs carry a key, spread over this many hash tags
    partitions_per_host: int | None = None  # a master leases at most this many (None: no cap)
    autoscale: Autoscale | None = None  # elastic: `concurrency` is its max, the autoscaler moves within
    command: tuple[str, ...] | None = None  # a command pool: each worker runs (and governs) this program
    env: tuple[tuple[str, str], ...] = ()  # added to the command's environment
    cwd: str | None = None
    stop_signal: int = 15  # sent to the command on drain and recycle (SIGKILL after shutdown_timeout)
    protocol: str | None = None  # 'jsonl': the command takes governor jobs over two pipes


@dataclass(frozen=True)
class TlsConfig:
    ca: str | None = None
    cert: str | None = None
    key: str | None = None


@dataclass(frozen=True)
class RedisConfig:
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "governor"
    tls: TlsConfig = field(default_factory=TlsConfig)
    wait_replicas: int = 0  # enqueue and settle wait (WAIT) for this many replicas to hold the write
    wait_timeout: float = 0.1

    @property
    def embedded(self) -> bool:
        return self.url == "embedded"


@dataclass(frozen=True)
class AppConfig:
    path: tuple[str, ...] = ()
    preload: tuple[str, ...] = ()  # imported once in the master, before fork
    imports: tuple[str, ...] = ()  # imported by each worker as it starts (fresh code per worker)
    handlers: tuple[str, ...] = ()


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: str = "text"


@dataclass(frozen=True)
class MetricsConfig:
    listen: str | None = None


@dataclass(frozen=True)
class WebConfig:
    """The page at ``/`` on metrics.listen: read-only unless ``token`` is set; its actions
    (retry, delete, pause, resume) are POSTs carrying that token."""

    token: str | None = field(default=None, repr=False)
    # host names the page answers to besides IP literals, localhost and this machine's name:
    # any other Host header is refused (DNS rebinding would let a site read the page)
    hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class HealthConfig:
    redis_grace: float = 30.0  # /healthz fails once Redis has been unreachable this long
    max_loop_lag: float = 5.0  # ... or when the master's loop woke up this late


@dataclass(frozen=True)
class Config:
    source: str
    redis: RedisConfig
    app: AppConfig
    queues: Mapping[str, QueueConfig]
    shutdown_timeout: float = 30.0
    lease: float = 60.0
    state_dir: str = ""
    explicit_state_dir: bool = False  # named in the file (else the CLI searches the candidates)
    data_dir: str = ""  # an embedded Redis's append-only file
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    max_payload: int = 1024 * 1024
    max_result: int = 64 * 1024  # a larger result is not kept; the job's record says so
    user: str | None = None
    group: str | None = None
    limiters: Mapping[str, tuple[RateLimit, ...]] = field(default_factory=dict)
    host: HostGuards = field(default_factory=HostGuards)
    web: WebConfig = field(default_factory=WebConfig)
    # environment variables interpolated into secret settings (is_secret): workers drop them
    secret_env: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The effective config, as YAML-ready data with units spelled out."""

        def settings(s: QueueSettings) -> dict[str, Any]:
            return {
                "memory": {"soft": format_size(s.memory.soft), "hard": format_size(s.memory.hard),
                           "measure": s.memory.measure, "interval": format_duration(s.memory.interval),
                           "rlimit": s.memory.rlimit},
                "timeout": {"soft": format_duration(s.timeout.soft),
                            "hard": format_duration(s.timeout.hard),
                            **({"adaptive": _adaptive_dict(s.timeout.adaptive)} if s.timeout.adaptive else {})},
                "recycle": {"max_jobs": s.recycle.max_jobs,
                            "max_age": format_duration(s.recycle.max_age),
                            "jitter": s.recycle.jitter,
                            "max_concurrent": s.recycle.max_concurrent},
                "retry": {"max": s.retry.max, "backoff": format_duration(s.retry.backoff),
                          "max_backoff": format_duration(s.retry.max_backoff)},
                "done_ttl": format_duration(s.done_ttl),
            }

        return {
            "redis": {"url": mask_url(self.redis.url), "prefix": self.redis.prefix,
                      "tls": dataclasses.asdict(self.redis.tls),
                      "wait": {"replicas": self.redis.wait_replicas,
                               "timeout": format_duration(self.redis.wait_timeout)}},
            "limits": {"max_payload": format_size(self.max_payload),
                       "max_result": format_size(self.max_result)},
            "user": self.user, "group": self.group,
            "app": {"path": list(self.app.path), "preload": list(self.app.preload),
                    "imports": list(self.app.imports), "handlers": list(self.app.handlers)},
            "shutdown_timeout": format_duration(self.shutdown_timeout),
            "lease": format_duration(self.lease),
            "state_dir": self.state_dir,
            "data_dir": self.data_dir,
            "log": {"level": self.log.level, "format": self.log.format},
            "metrics": {"listen": self.metrics.listen},
            "web": {"token": "***" if self.web.token else None, "hosts": list(self.web.hosts)},
            "health": {"redis_grace": format_duration(self.health.redis_grace),
                       "max_loop_lag": format_duration(self.health.max_loop_lag)},
            "limiters": {name: _limits_dict(limits) for name, limits in self.limiters.items()},
            "host": {"min_available_memory": format_size(self.host.min_available_memory),
                     "max_cpu": f"{self.host.max_cpu:g}%" if self.host.max_cpu is not None else None},
            "queues": {q.name: {"concurrency": ({"min": q.autoscale.min, "max": q.autoscale.max}
                                                if q.autoscale else q.concurrency),
                                **({"autoscale": _autoscale_dict(q.autoscale)} if q.autoscale else {}),
                                **({"command": list(q.command), "env": dict(q.env), "cwd": q.cwd,
                                    "stop_signal": signal_name(q.stop_signal), "protocol": q.protocol}
                                   if q.command else {}),
                                "user": q.user, "group": q.group,
                                "rate_limit": _limits_dict(q.rate_limits), "limiters": list(q.limiters),
                                "global_concurrency": q.global_concurrency,
                                "partitions": q.partitions, "partitions_per_host": q.partitions_per_host,
                                **settings(q.settings)}
                       for q in self.queues.values()},
        }


def _adaptive_dict(a: AdaptiveTimeout) -> dict[str, Any]:
    return {"percentile": a.percentile, "factor": a.factor, "min": format_duration(a.min),
            "max": format_duration(a.max), "samples": a.samples, "max_kills": a.max_kills,
            "window": format_duration(a.window)}


def _autoscale_dict(a: Autoscale) -> dict[str, Any]:
    return {"up_wait": format_duration(a.up_wait), "up_depth": a.up_depth,
            "down_idle": format_duration(a.down_idle), "up_cooldown": format_duration(a.up_cooldown),
            "down_cooldown": format_duration(a.down_cooldown)}


def _limits_dict(limits: tuple[RateLimit, ...]) -> list[dict[str, Any]]:
    """Rate limits as ``check`` prints them; a window has no burst, so none is shown for it."""
    out = []
    for r in limits:
        shown: dict[str, Any] = {"limit": r.limit, "per": _format_per(r.per), "algorithm": r.algorithm}
        if r.algorithm == "token_bucket":
            shown["burst"] = r.burst
        out.append(shown)
    return out


def _format_per(seconds: float) -> str:
    """``1m`` for 60.0, but never a rounded figure (format_duration shows 1.5ms as ``2ms``)."""
    text = format_duration(seconds)
    return text if parse_duration(text) == seconds else f"{seconds}s"


def mask_url(url: str) -> str:
    """Hide every password in a ``redis.url`` (``user:secret@``, Sentinel's ``secret@``,
    ``?password=``) so it never reaches a log, ``check`` or ``status``.

    Rendered from the same parse that connects (governor.redisurl), so the two cannot
    disagree about where a password ends."""
    return redisurl.mask(url)


# --------------------------------------------------------------------------
# Parsing


_ENV = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}")


def is_secret(path: str) -> bool:
    """Settings that hold secrets: the Redis URL (it may carry a password), the web token, and
    anything named like a password or token. A variable interpolated into one of them is kept
    from the workers (their jobs may run as another user and must not read it from their
    environment)."""
    leaf = path.rsplit(".", 1)[-1]
    return path == "redis.url" or leaf in ("token", "password") or leaf.endswith("_password")


def interpolate(text: str, path: str, env: Mapping[str, str], used: set[str] | None = None) -> str:
    """``${VAR}``, ``${VAR:-default}`` (unset or empty), ``${VAR-default}`` (unset); ``$$`` is ``$``.
    The names of the variables read are added to ``used``."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, default = m.group(1), m.group(2), m.group(3)
        if used is not None:
            used.add(name)
        value = env.get(name)
        if op == ":-" and not value:
            return default
        if op == "-" and value is None:
            return default
        if value is None:
            raise ConfigError(path, f"environment variable {name} is not set (write ${{{name}:-default}} for a default)")
        return value

    return _ENV.sub(sub, text)


class _Section:
    """One mapping of the YAML file: hands out its keys and rejects any left unread."""

    def __init__(self, data: object, path: str, env: Mapping[str, str],
                 secrets: set[str] | None = None) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(path, f"expected a mapping, got {_show(data)}")
        self.data = dict(data)
        self.path = path
        self.env = env
        # names of the variables interpolated into secret settings, shared by every section
        self.secrets: set[str] = set() if secrets is None else secrets

    def sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, parse: Callable[[Any], Any], default: Any = None) -> Any:
        if key not in self.data:
            return default
        raw = self.data.pop(key)
        raw = self._expand(raw, self.sub(key))
        if raw is None:
            return default
        try:
            return parse(raw)
        except ConfigError:
            raise
        except (ValueError, TypeError) as exc:
            raise ConfigError(self.sub(key), str(exc)) from None

    def section(self, key: str) -> _Section:
        return _Section(self.data.pop(key, None), self.sub(key), self.env, self.secrets)

    def raw(self, key: str) -> Any:
        return self.data.pop(key, None)

    def _expand(self, value: Any, path: str) -> Any:
        if isinstance(value, str):
            return interpolate(value, path, self.env, self.secrets if is_secret(path) else None)
        if isinstance(value, list):
            return [self._expand(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    def done(self) -> None:
        if self.data:
            key = sorted(map(str, self.data))[0]
            raise ConfigError(self.sub(key), "unknown key" + _suggest(key, self.known))

    known: tuple[str, ...] = ()

    def expect(self, *keys: str) -> _Section:
        self.known = keys
        return self


def _suggest(key: str, known: tuple[str, ...]) -> str:
    import difflib

    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} (known keys: {', '.join(known)})" if known else hint


def _did_you_mean(word: str, options: Any) -> str:
    import difflib

    close = difflib.get_close_matches(word, list(options), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _show(value: object) -> str:
    return repr(value)


def _int(minimum: int) -> Callable[[Any], int]:
    def parse(v: Any) -> int:
        if isinstance(v, bool):
            raise ValueError(f"expected an integer >= {minimum}, got {v!r}")
        if isinstance(v, str) and re.fullmatch(r"\s*-?\d+\s*", v):
            v = int(v)
        if not isinstance(v, int) or v < minimum:
            raise ValueError(f"expected an integer >= {minimum}, got {v!r}")
        return v

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

    return parse


_user, _group = _account("user"), _account("group")


def _existing_file(base_dir: Path) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        path = (base_dir / _string(v)).resolve()
        if not path.is_file():
            raise ValueError(f"no such file: {str(path)!r}")
        return str(path)

    return parse


def _listen(v: Any) -> str:
    v = _string(v)
    host, sep, port = v.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:9808, got {v!r}")
    return v


_SETTING_KEYS = ("memory", "timeout", "recycle", "retry", "done_ttl")
_PER_QUEUE_KEYS = ("rate_limit", "limiters", "global_concurrency", "partitions",
                   "partitions_per_host")  # never inherited from defaults
MAX_PARTITIONS = 1024
_PER_WORDS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
_LIMIT_EXAMPLE = "{limit: 300, per: 1m}"


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


def _rate_limit(data: Any, path: str, env: Mapping[str, str]) -> RateLimit:
    if not isinstance(data, dict):
        raise ConfigError(path, f"expected a limit such as {_LIMIT_EXAMPLE}, got {_show(data)}")
    sec = _Section(data, path, env).expect("limit", "per", "algorithm", "burst")
    limit = sec.get("limit", _int(1))
    per = sec.get("per", _per)
    algorithm = sec.get("algorithm", _algorithm, "token_bucket")
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


def _positive_duration(v: Any) -> float:
    d = parse_duration(v)
    if d <= 0:
        raise ValueError(f"expected a duration above zero, got {v!r}")
    return d


def _adaptive(tmo: _Section, base: AdaptiveTimeout | None) -> AdaptiveTimeout | None:
    """``timeout.adaptive``: ``off`` (none), ``on`` (the defaults), or a mapping over ``base``."""
    raw = tmo.data.get("adaptive")
    if raw is False or (isinstance(raw, str) and raw.strip().lower() in ("off", "none", "false", "no")):
        tmo.raw("adaptive")
        return None
    if raw is True or (isinstance(raw, str) and raw.strip().lower() in ("on", "true", "yes")):
        tmo.raw("adaptive")
        return base or AdaptiveTimeout()
    a = tmo.section("adaptive").expect("percentile", "factor", "min", "max", "samples", "max_kills", "window")
    base = base or AdaptiveTimeout()
    out = AdaptiveTimeout(
        percentile=a.get("percentile", _percent("a percentile", open_range=True), base.percentile),
        factor=a.get("factor", _number_at_least(1.0, "the factor"), base.factor),
        min=a.get("min", _positive_duration, base.min),
        max=a.get("max", _positive_duration, base.max),
        samples=a.get("samples", _int(1), base.samples),
        max_kills=a.get("max_kills", _int(1), base.max_kills),
        window=a.get("window", _positive_duration, base.window),
    )
    a.done()
    if out.min > out.max:
        raise ConfigError(a.path, f"min ({format_duration(out.min)}) is above max ({format_duration(out.max)})")
    return out


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

    return parse


def _number_at_least(low: float, what: str) -> Callable[[Any], float]:
    def parse(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= low or v == float("inf"):
            raise ValueError(f"expected {what} as a number >= {low:g}, got {v!r}")
        return float(v)

    return parse


_COMMAND_KEYS = ("command", "env", "cwd", "stop_signal", "protocol")


def _signal_name(v: Any) -> int:
    import signal

    name = _string(v).upper()
    name = name if name.startswith("SIG") else f"SIG{name}"
    if name in ("SIGKILL", "SIGSTOP") or not hasattr(signal, name) or not isinstance(getattr(signal, name), signal.Signals):
        raise ValueError(f"expected a signal a program can handle, such as TERM, INT, QUIT or HUP, got {v!r}")
    return int(getattr(signal, name))


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
            "stop_signal": q.get("stop_signal", _signal_name, 15), "protocol": protocol}


def signal_name(number: int) -> str:
    import signal

    return signal.Signals(number).name[3:]


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


_AUTOSCALE_KEYS = ("up_wait", "up_depth", "down_idle", "up_cooldown", "down_cooldown")


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
    d = Autoscale(min=low, max=high)
    scale = Autoscale(
        min=low, max=high,
        up_wait=a.get("up_wait", _optional(_positive_duration), d.up_wait),
        up_depth=a.get("up_depth", _optional(_int(1)), d.up_depth),
        down_idle=a.get("down_idle", parse_duration, d.down_idle),
        up_cooldown=a.get("up_cooldown", parse_duration, d.up_cooldown),
        down_cooldown=a.get("down_cooldown", parse_duration, d.down_cooldown),
    )
    for key in ("down_idle", "up_cooldown", "down_cooldown"):
        if getattr(scale, key) < 0:
            raise ConfigError(a.sub(key), f"expected a duration >= 0, got {format_duration(getattr(scale, key))}")
    a.done()
    if scale.up_wait is None and scale.up_depth is None:
        raise ConfigError(a.path, "up_wait and up_depth are both off: nothing would ever scale the pool up")
    return high, scale


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


def _host(top: _Section) -> HostGuards:
    h = top.section("host").expect("min_available_memory", "max_cpu")
    guards = HostGuards(min_available_memory=h.get("min_available_memory", _optional(parse_size), None),
                        max_cpu=h.get("max_cpu", _percent("a CPU share"), None))
    h.done()
    return guards


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


def _settings(sec: _Section, base: QueueSettings) -> QueueSettings:
    """Reads the inheritable keys of ``defaults`` or of one queue, over ``base``."""
    mem = sec.section("memory").expect("soft", "hard", "measure", "interval", "rlimit")
    memory = MemoryLimits(
        soft=mem.get("soft", _optional(parse_size), base.memory.soft),
        hard=mem.get("hard", _optional(parse_size), base.memory.hard),
        measure=mem.get("measure", _choice("rss", "uss", "pss"), base.memory.measure),
        interval=mem.get("interval", parse_duration, base.memory.interval),
        rlimit=mem.get("rlimit", _bool, base.memory.rlimit),
    )
    if memory.interval < 0.01:
        raise ConfigError(mem.sub("interval"), f"expected at least 10ms, got {format_duration(memory.interval)}")
    mem.done()
    if memory.soft and memory.hard and memory.soft > memory.hard:
        raise ConfigError(mem.path, f"soft ({format_size(memory.soft)}) is above hard ({format_size(memory.hard)})")

    tmo = sec.section("timeout").expect("soft", "hard", "adaptive")
    adaptive = base.timeout.adaptive
    if "adaptive" in tmo.data:
        adaptive = _adaptive(tmo, adaptive)
    timeout = TimeoutLimits(
        soft=tmo.get("soft", _optional(parse_duration), base.timeout.soft),
        hard=tmo.get("hard", _optional(parse_duration), base.timeout.hard),
        adaptive=adaptive,
    )
    tmo.done()
    if adaptive and not timeout.hard:
        raise ConfigError(tmo.sub("adaptive"), "an adaptive limit replaces the hard limit once learnt, "
                                               "and falls back to it: set timeout.hard too")
    if timeout.soft and timeout.hard and timeout.soft > timeout.hard:
        raise ConfigError(tmo.path, f"soft ({format_duration(timeout.soft)}) is above hard ({format_duration(timeout.hard)})")

    rec = sec.section("recycle").expect("max_jobs", "max_age", "jitter", "max_concurrent")
    recycle = RecyclePolicy(
        max_jobs=rec.get("max_jobs", _optional(_int(1)), base.recycle.max_jobs),
        max_age=rec.get("max_age", _optional(parse_duration), base.recycle.max_age),
        jitter=rec.get("jitter", _fraction, base.recycle.jitter),
        max_concurrent=rec.get("max_concurrent", _int(1), base.recycle.max_concurrent),
    )
    rec.done()

    ret = sec.section("retry").expect("max", "backoff", "max_backoff")
    retry = RetryPolicy(
        max=ret.get("max", _int(0), base.retry.max),
        backoff=ret.get("backoff", parse_duration, base.retry.backoff),
        max_backoff=ret.get("max_backoff", parse_duration, base.retry.max_backoff),
    )
    ret.done()
    done_ttl = sec.get("done_ttl", parse_duration, base.done_ttl)
    return QueueSettings(memory=memory, timeout=timeout, recycle=recycle, retry=retry, done_ttl=done_ttl)


def state_dir_candidates(source: str) -> list[str]:
    """Where the control socket (and an embedded Redis's socket) may be when the file does
    not say, most specific first: ``$GOVERNOR_STATE_DIR``; systemd's ``$RUNTIME_DIRECTORY``
    (set for the service, not for an operator's shell, hence the next two);
    ``/run/governor/<config name>`` (the template unit) and ``/run/governor`` (the plain
    unit); last, a per-user directory under /tmp keyed by the config file's path."""
    import hashlib

    out = []
    for env in ("GOVERNOR_STATE_DIR", "RUNTIME_DIRECTORY"):
        if os.environ.get(env):
            out.append(os.environ[env].split(":")[0])
    stem = Path(source).stem
    out += [f"/run/governor/{stem}", "/run/governor"] if stem != "governor" else ["/run/governor"]
    key = hashlib.sha1(os.path.abspath(source).encode()).hexdigest()[:8]
    out.append(os.path.join(tempfile.gettempdir(), f"governor-{os.getuid()}", key))
    return out


def default_state_dir(source: str) -> str:
    """The master's state directory when the file names none: the environment's choice, else
    the per-user fallback. (``/run/governor`` is only ever used because systemd set
    RUNTIME_DIRECTORY to it; the CLI finds it among the candidates.)"""
    for env in ("GOVERNOR_STATE_DIR", "RUNTIME_DIRECTORY"):
        if os.environ.get(env):
            return os.environ[env].split(":")[0]
    return state_dir_candidates(source)[-1]


def default_data_dir(state_dir: str) -> str:
    """Where an embedded Redis keeps its append-only file: systemd's ``$STATE_DIRECTORY``
    (persistent, unlike RuntimeDirectory, which is emptied on every stop), else state_dir."""
    return os.environ.get("STATE_DIRECTORY", "").split(":")[0] or state_dir


def parse_config(data: object, source: str = "<config>", env: Mapping[str, str] | None = None) -> Config:
    """Validates already-loaded YAML data; paths in ``app.path`` resolve against ``source``'s directory."""
    env = os.environ if env is None else env
    try:
        return _parse(data, source, env)
    except ConfigError as exc:
        if exc.source is None:
            raise ConfigError(exc.path, exc.message, source) from None
        raise


def _parse(data: object, source: str, env: Mapping[str, str]) -> Config:
    top = _Section(data, "", env).expect(
        "redis", "app", "defaults", "queues", "shutdown_timeout", "lease", "state_dir", "data_dir",
        "log", "metrics",
        "limits", "user", "group", "health", "limiters", "host", "web")
    base_dir = Path(source).resolve().parent if source and not source.startswith("<") else Path.cwd()

    red = top.section("redis").expect("url", "prefix", "tls", "wait")
    tls_sec = red.section("tls").expect("ca", "cert", "key")
    tls = TlsConfig(**{k: tls_sec.get(k, _existing_file(base_dir), None) for k in ("ca", "cert", "key")})
    tls_sec.done()
    wait = red.section("wait").expect("replicas", "timeout")
    wait_replicas = wait.get("replicas", _int(0), 0)
    wait_timeout = wait.get("timeout", parse_duration, 0.1)
    if not 0.001 <= wait_timeout <= 60:
        raise ConfigError(wait.sub("timeout"), f"expected 1ms to 60s, got {format_duration(wait_timeout)}")
    wait.done()
    redis = RedisConfig(
        url=red.get("url", _string, RedisConfig.url),
        prefix=red.get("prefix", _string, RedisConfig.prefix),
        tls=tls, wait_replicas=wait_replicas, wait_timeout=wait_timeout,
    )
    red.done()
    if not redis.embedded:
        try:
            redisurl.parse(redis.url)  # what check accepts, redis-py reads the same way
        except redisurl.RedisURLError as exc:
            raise ConfigError("redis.url", f"{exc}; got {mask_url(redis.url)!r}") from None
    if not re.fullmatch(r"[A-Za-z0-9_.:-]+", redis.prefix):
        raise ConfigError("redis.prefix", f"expected letters, digits and _.:- only, got {redis.prefix!r}")

    ap = top.section("app").expect("path", "preload", "imports", "handlers")
    app = AppConfig(
        path=tuple(str((base_dir / p).resolve()) for p in ap.get("path", _string_list, ())),
        preload=ap.get("preload", _string_list, ()),
        imports=ap.get("imports", _string_list, ()),
        handlers=ap.get("handlers", _handler_patterns, ()),
    )
    ap.done()

    defaults_sec = top.section("defaults").expect(*_SETTING_KEYS)
    defaults = _settings(defaults_sec, QueueSettings())
    for key in _PER_QUEUE_KEYS:
        if key in defaults_sec.data:  # each queue would get a limit of its own: easily mistaken for a shared one
            share = (" (to share one limit between queues, define it in the top-level limiters: and name it in "
                     "each queue's limiters:)") if key == "rate_limit" else ""
            raise ConfigError(defaults_sec.sub(key), f"set per queue, not in defaults{share}")
    defaults_sec.done()
    named_limiters = _named_limiters(top.get("limiters", lambda v: v), env)

    user = top.get("user", _user, None)
    group = top.get("group", _group, None)
    lim = top.section("limits").expect("max_payload", "max_result")
    max_payload = lim.get("max_payload", parse_size, 1024 * 1024)
    max_result = lim.get("max_result", parse_size, 64 * 1024)
    lim.done()

    queues_raw = top.raw("queues")
    if not isinstance(queues_raw, dict) or not queues_raw:
        raise ConfigError("queues", f"expected a mapping of queue name to settings, got {_show(queues_raw)}")
    queues: dict[str, QueueConfig] = {}
    for name, body in queues_raw.items():
        path = f"queues.{name}"
        problem = queue_name_problem(name)
        if problem:
            raise ConfigError(path, problem)
        if isinstance(body, int) and not isinstance(body, bool):
            body = {"concurrency": body}
        q = _Section(body, path, env).expect("concurrency", "autoscale", "user", "group", *_SETTING_KEYS,
                                             *_PER_QUEUE_KEYS, *_COMMAND_KEYS)
        concurrency, autoscale = _elastic(q)
        command = _command(q, base_dir)
        q_user = q.get("user", _user, user)
        q_group = q.get("group", _group, group)
        settings = _settings(q, defaults)
        rate_limits, q_limiters, global_concurrency = _queue_limits(q, named_limiters)
        partitions, per_host = _partitioning(q, bool(rate_limits or q_limiters or global_concurrency))
        if q_limiters and redisurl.is_cluster(redis.url):
            raise ConfigError(q.sub("limiters"), "on Redis Cluster a queue's starts cannot count against a "
                                                 "named limiter (it lives in another slot than the queue): "
                                                 "give the queue its own rate_limit, or call "
                                                 "governor.limit(name) in the handler")
        q.done()
        if (q_user or q_group) and redis.embedded:
            raise ConfigError(f"{path}.user" if q_user else f"{path}.group",
                              "dropping privileges needs your own Redis: the embedded one listens on a "
                              "socket private to the master's user")
        queues[name] = QueueConfig(name=name, concurrency=concurrency, settings=settings,
                                   user=q_user, group=q_group, rate_limits=rate_limits,
                                   limiters=q_limiters, global_concurrency=global_concurrency,
                                   partitions=partitions, partitions_per_host=per_host,
                                   autoscale=autoscale, **command)

    shutdown_timeout = top.get("shutdown_timeout", parse_duration, 30.0)
    lease = top.get("lease", parse_duration, 60.0)
    if lease < 1:
        raise ConfigError("lease", f"expected at least 1s, got {format_duration(lease)}")
    state_dir = top.get("state_dir", _string, None)
    explicit_state_dir = bool(state_dir)
    # abspath, not resolve(): a symlink in place of the directory must reach the state-dir
    # checks (which refuse it) rather than be silently followed here
    state_dir = os.path.abspath(base_dir / state_dir) if state_dir else default_state_dir(source)
    data_dir = top.get("data_dir", _string, None)
    data_dir = os.path.abspath(base_dir / data_dir) if data_dir else default_data_dir(state_dir)

    lg = top.section("log").expect("level", "format")
    log = LogConfig(
        level=lg.get("level", _choice("debug", "info", "warning", "error"), "info"),
        format=lg.get("format", _choice("text", "json"), "text"),
    )
    lg.done()

    me = top.section("metrics").expect("listen")
    metrics = MetricsConfig(listen=me.get("listen", _optional(_listen), None))
    me.done()
    he = top.section("health").expect("redis_grace", "max_loop_lag")
    health = HealthConfig(redis_grace=he.get("redis_grace", parse_duration, 30.0),
                          max_loop_lag=he.get("max_loop_lag", parse_duration, 5.0))
    he.done()
    host = _host(top)
    wb = top.section("web").expect("token", "hosts")
    web = WebConfig(token=wb.get("token", _token, None), hosts=wb.get("hosts", _host_names, ()))
    wb.done()
    if web.token and not metrics.listen:
        raise ConfigError("web.token", "the page is served on metrics.listen: set that too")
    top.done()

    return Config(source=source, redis=redis, app=app, queues=queues,
                  shutdown_timeout=shutdown_timeout, lease=lease, state_dir=state_dir,
                  explicit_state_dir=explicit_state_dir, data_dir=data_dir,
                  log=log, metrics=metrics, health=health, max_payload=max_payload,
                  max_result=max_result, user=user,
                  group=group, limiters=named_limiters, host=host, web=web,
                  secret_env=tuple(sorted(top.secrets)))


MAX_CONFIG_BYTES = 1024 * 1024
MAX_CONFIG_VALUES = 100_000


def load_config(path: str, env: Mapping[str, str] | None = None) -> Config:
    """Reads and validates a YAML file; every failure is a ConfigError naming the file.

    The file is bounded twice, because a reload runs inside the master's loop: a SIGHUP that
    parsed for minutes would stop the loop that enforces hard limits. The size cap bounds
    the parse; the value count (aliases expanded) stops an alias bomb, a few hundred bytes
    that expand to a billion values, before anything walks the expanded document.
    """
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError("", f"cannot read config: {exc.strerror}", path) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError("", f"the file is larger than {format_size(MAX_CONFIG_BYTES)}; "
                              "is this really the config file?", path)
    loader = yaml.SafeLoader(raw)
    try:
        node = loader.get_single_node()
        if node is not None and _expanded_size(node, MAX_CONFIG_VALUES) > MAX_CONFIG_VALUES:
            raise ConfigError("", f"YAML expands to more than {MAX_CONFIG_VALUES:,} values "
                                  "(an alias bomb?)", path)
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError("", f"invalid YAML: {where}{problem}", path) from None
    except RecursionError:
        raise ConfigError("", "invalid YAML: nested too deeply", path) from None
    finally:
        loader.dispose()
    return parse_config(data, path, env)


def _expanded_size(root: yaml.Node, limit: int) -> int:
    """How many values the document holds with every alias expanded, capped just above
    ``limit``. An alias is the same node object reached twice, so memoising per node keeps
    this linear in the file however large the expansion; a node that contains itself
    (``&a [*a]``) expands forever and counts as too many."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            sizes[key] = min(limit + 1, 1 + sum(sizes[id(c)] for c in _children(node)))
            continue
        if key in sizes:
            continue
        if key in on_path:
            return limit + 1
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in on_path:
                return limit + 1
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []
