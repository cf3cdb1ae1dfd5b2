"""The frozen dataclasses a config file becomes, each setting declared once (``setting``:
default, converter, renderer, bounds, help), and ``Config.to_dict``, the effective config as
``check`` prints it. Field order is the order the keys are read in, so the first error
reported is the first bad key in that order."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from governor.config.declare import setting, show
from governor.config.render import _format_per, mask_url
from governor.config.values import (
    _bool,
    _choice,
    _fraction,
    _group,
    _handler_patterns,
    _host_names,
    _int,
    _listen,
    _number_at_least,
    _optional,
    _percent,
    _positive_duration,
    _string,
    _string_list,
    _token,
    _user,
    signal_name,
)
from governor.units import format_duration, format_size, parse_duration, parse_size

D, S = format_duration, format_size  # the renderers of durations and sizes


@dataclass(frozen=True)
class MemoryLimits:
    soft: int | None = setting(512 * 1024**2, _optional(parse_size), show=S, help=(
        "above it a worker finishes its job, then is replaced (off: no limit)"))
    hard: int | None = setting(1024**3, _optional(parse_size), show=S, help=(
        "above it the worker's process tree is killed and the job failed (off: no limit)"))
    measure: str = setting("rss", _choice("rss", "uss", "pss"), help=(
        "what confirms a limit crossed on RSS"))
    interval: float = setting(0.5, parse_duration, show=D, low=0.01, help=(
        "time between the master's samples of each worker"))
    rlimit: bool = setting(False, _bool, help=(
        "also set RLIMIT_AS to hard in the worker (a second line of defence)"))


@dataclass(frozen=True)
class AdaptiveTimeout:
    """``timeout.adaptive``: the hard limit learnt from the handler's own successful runs,
    fleet-wide: clamp(p<percentile> * factor, min, max) once ``samples`` runs are known."""

    percentile: float = setting(95.0, _percent("a percentile", open_range=True), help=(
        "the percentile of successful runs' durations the limit is learnt from"))
    factor: float = setting(3.0, _number_at_least(1.0, "the factor"), help=(
        "the learnt limit is the percentile times this"))
    min: float = setting(5.0, _positive_duration, show=D, help="the learnt limit is at least this")
    max: float = setting(600.0, _positive_duration, show=D, help="... and at most this")
    samples: int = setting(50, _int(1), help="successful runs known before a limit is learnt")
    max_kills: int = setting(3, _int(1), help=(
        "adaptive kills of one handler within window that make it fall back to the configured limit"))
    window: float = setting(600.0, _positive_duration, show=D, help=(
        "how long an adaptive kill counts towards max_kills"))


@dataclass(frozen=True)
class TimeoutLimits:
    soft: float | None = setting(50.0, _optional(parse_duration), show=D, help=(
        "raises SoftTimeLimitExceeded in the handler; a job's own timeout scales it in proportion"))
    hard: float | None = setting(60.0, _optional(parse_duration), show=D, help=(
        "the kill deadline; a job's own timeout replaces it"))
    grace: float = setting(1.0, parse_duration, show=D, help=(
        "with jobs_per_worker > 1: a job past its hard limit is cancelled first, and its worker's "
        "tree killed only if it has not ended this much later (0: at once)"))
    adaptive: AdaptiveTimeout | None = setting(None, omit_none=True, kind="on, off or a mapping", help=(
        "a hard limit learnt from each handler's own runs (on: the defaults below)"))


@dataclass(frozen=True)
class RecyclePolicy:
    max_jobs: int | None = setting(1000, _optional(_int(1)), help=(
        "a worker is replaced after this many jobs (off: never)"))
    max_age: float | None = setting(4 * 3600.0, _optional(parse_duration), show=D, help=(
        "... or after this long (off: never)"))
    jitter: float = setting(0.1, _fraction, help=(
        "max_jobs and max_age vary by up to this fraction, so workers do not recycle together"))
    max_concurrent: int | None = setting(None, _int(1), doc_default="a quarter of the pool, at least 1",
                                         help="at most this many of a pool's workers recycle at once")


@dataclass(frozen=True)
class RetryPolicy:
    max: int = setting(3, _int(0), help="retries after the first run")
    backoff: float = setting(2.0, parse_duration, show=D, help=(
        "the wait before the first retry, doubling per attempt, with jitter"))
    max_backoff: float = setting(600.0, parse_duration, show=D, help="the longest wait between retries")


@dataclass(frozen=True)
class Autoscale:
    """An elastic pool (``concurrency: {min, max}`` and ``autoscale:``): up on the oldest
    waiting job's age or the depth per worker, down by retiring workers idle this long."""

    min: int = setting(shown=False, help="the fewest workers (concurrency.min)")
    max: int = setting(shown=False, help="the most workers (concurrency.max)")
    up_wait: float | None = setting(5.0, _optional(_positive_duration), show=D, help=(
        "up while the oldest waiting job has waited longer than this"))
    up_depth: int | None = setting(100, _optional(_int(1)), help=(
        "... or while more than this many jobs wait per worker"))
    down_idle: float = setting(60.0, parse_duration, show=D, help=(
        "down when a worker has been idle this long"))
    up_cooldown: float = setting(10.0, parse_duration, show=D, help=(
        "at most one step up per this; steps double while it lasts"))
    down_cooldown: float = setting(120.0, parse_duration, show=D, help=(
        "at most one step (of 1) down per this, after any step"))


@dataclass(frozen=True)
class HostGuards:
    """``host:``: what every step up on this host must leave free (psutil's readings)."""

    min_available_memory: int | None = setting(None, _optional(parse_size), show=S, help=(
        "an elastic pool steps up only while this much memory stays available"))
    max_cpu: float | None = setting(None, _percent("a CPU share"), show=lambda c: None if c is None else f"{c:g}%",
                                    help="... and while the host's CPUs are less busy than this (last 10 s)")


@dataclass(frozen=True)
class QueueSettings:
    """What a queue inherits from ``defaults``; a change here restarts its workers on reload."""

    memory: MemoryLimits = setting(factory=MemoryLimits, help="memory limits of each worker")
    timeout: TimeoutLimits = setting(factory=TimeoutLimits, help="time limits of each job")
    recycle: RecyclePolicy = setting(factory=RecyclePolicy, help="when a worker is replaced")
    retry: RetryPolicy = setting(factory=RetryPolicy, help="how a failed job is retried")
    done_ttl: float = setting(3600.0, parse_duration, show=D, help=(
        "how long a finished job's record stays readable"))
    jobs_per_worker: int = setting(1, _int(1), help=(
        "jobs each worker process runs at once: async def handlers as tasks on its event loop, "
        "plain functions on a pool of this many threads; each job keeps its own limits"))


@dataclass(frozen=True)
class RateLimit:
    """A cap on job starts, enforced fleet-wide in the reserve script (not in any one host)."""

    limit: int = setting(kind="integer >= 1", help="starts allowed per `per`")
    per: float = setting(kind="duration, or second/minute/hour/day", help="the period (at least 1ms)")
    algorithm: str = setting("token_bucket", kind="token_bucket | sliding_window | fixed_window",
                             help="token_bucket is GCRA")
    burst: int = setting(1, kind="integer >= 1", help="token_bucket only: this many may start at once")


@dataclass(frozen=True)
class QueueConfig:
    name: str
    concurrency: int = setting(kind="integer >= 0, or {min, max}", help=(
        "worker processes for the queue (0 pauses it); {min, max} makes an elastic pool"))
    settings: QueueSettings
    user: str | None = setting(None, _user, doc_default="the top-level user", help=(
        "run this queue's workers as this user (the master started as root)"))
    group: str | None = setting(None, _group, doc_default="the top-level group", help="... and group")
    rate_limits: tuple[RateLimit, ...] = setting((), key="rate_limit", kind="a limit or a list of them",
                                                 help="a job starts only when every limit allows it")
    limiters: tuple[str, ...] = setting((), kind="a name or a list of names", help=(
        "named limiters (top-level limiters) its starts also count against"))
    global_concurrency: int | None = setting(None, _optional(_int(1)), help=(
        "at most this many of its jobs running at once, fleet-wide"))
    partitions: int | None = setting(None, _optional(_int(1)), help=(
        "per-key ordered: jobs carry a key, spread over this many partitions (at most 1024)"))
    partitions_per_host: int | None = setting(None, _optional(_int(1)), help=(
        "a master leases at most this many partitions (none: no cap)"))
    autoscale: Autoscale | None = setting(None, kind="mapping", help=(
        "an elastic pool's thresholds (needs concurrency: {min, max})"))
    command: tuple[str, ...] | None = setting(None, kind="list, or a string split as a shell would", help=(
        "a command pool: each worker runs (and governs) this program"))
    env: tuple[tuple[str, str], ...] = setting((), kind="mapping", doc_default="{}", help="added to the command's environment")
    cwd: str | None = setting(None, _string, doc_default="the config file's directory", help=(
        "the command's directory, relative to the config file"))
    stop_signal: int = setting(15, show=signal_name, kind="signal name (TERM, INT, ...)", help=(
        "sent to the command on drain and recycle (SIGKILL after shutdown_timeout)"))
    protocol: str | None = setting(None, _choice("jsonl"), help=(
        "jsonl: the command takes governor jobs over two pipes"))


@dataclass(frozen=True)
class TlsConfig:
    ca: str | None = setting(None, kind="file (relative to the config file)", help="CA certificate")
    cert: str | None = setting(None, kind="file (relative to the config file)", help="client certificate")
    key: str | None = setting(None, kind="file (relative to the config file)", help="client key")


@dataclass(frozen=True)
class RedisConfig:
    url: str = setting("redis://127.0.0.1:6379/0", _string, show=mask_url, help=(
        "redis://, rediss:// (TLS), unix://, redis+sentinel://, redis+cluster:// or embedded "
        "(a private redis-server in state_dir); passwords are masked in logs, check and status"))
    prefix: str = setting("governor", _string, help="key prefix (letters, digits, _.:-)")
    tls: TlsConfig = setting(factory=TlsConfig, help="files for rediss://")
    wait_replicas: int = setting(0, _int(0), group="wait", key="replicas", help=(
        "every enqueue and settle waits (WAIT) for this many replicas to hold the write"))
    wait_timeout: float = setting(0.1, parse_duration, show=D, group="wait", key="timeout",
                                  low=0.001, high=60, bounds="1ms to 60s",
                                  help="how long such a wait may take")

    @property
    def embedded(self) -> bool:
        return self.url == "embedded"


@dataclass(frozen=True)
class AppConfig:
    path: tuple[str, ...] = setting((), _string_list, help="directories added to sys.path, relative to the config file")
    preload: tuple[str, ...] = setting((), _string_list, help=(
        "modules imported once in the master, before fork (changes need a restart)"))
    imports: tuple[str, ...] = setting((), _string_list, help=(
        "modules each worker imports as it starts (fresh code per worker)"))
    handlers: tuple[str, ...] = setting((), _handler_patterns, help=(
        "allowlist of module:function fnmatch patterns; other handlers are dead-lettered"))


@dataclass(frozen=True)
class LogConfig:
    level: str = setting("info", _choice("debug", "info", "warning", "error"), help=(
        "lines about single successful jobs are debug level"))
    format: str = setting("text", _choice("text", "json"), help=(
        "text for a terminal, json (one object per line) for journald and log shippers"))


@dataclass(frozen=True)
class MetricsConfig:
    listen: str | None = setting(None, _optional(_listen), help=(
        "where /metrics (Prometheus), /healthz and the page are served by the master's own loop"))


@dataclass(frozen=True)
class WebConfig:
    """The page at ``/`` on metrics.listen: read-only unless ``token`` is set; its actions
    (retry, delete, pause, resume) are POSTs carrying that token."""

    token: str | None = setting(None, _token, show=lambda t: "***" if t else None, repr=False, help=(
        "allows the page's actions (retry, delete, pause, resume); empty: a read-only page"))
    # host names the page answers to besides IP literals, localhost and this machine's name:
    # any other Host header is refused (DNS rebinding would let a site read the page)
    hosts: tuple[str, ...] = setting((), _host_names, help=(
        "host names the page answers to besides IP literals, localhost and this machine's name"))


@dataclass(frozen=True)
class HealthConfig:
    redis_grace: float = setting(30.0, parse_duration, show=D, help=(
        "/healthz fails once Redis has been unreachable this long"))
    max_loop_lag: float = setting(5.0, parse_duration, show=D, help=(
        "... or when the master's loop woke up this late"))


@dataclass(frozen=True)
class Config:
    source: str
    redis: RedisConfig = setting(help="the Redis server or cluster")
    app: AppConfig = setting(help="the application's code")
    queues: Mapping[str, QueueConfig] = setting(help="the queues, by name")
    shutdown_timeout: float = setting(30.0, parse_duration, show=D, help=(
        "how long SIGTERM waits for in-flight jobs before killing and requeueing them"))
    lease: float = setting(60.0, parse_duration, show=D, low=1, help=(
        "a job's lease in Redis, renewed by its live master; a dead host's jobs return after it"))
    state_dir: str = setting("", _string, doc_default="$GOVERNOR_STATE_DIR, $RUNTIME_DIRECTORY, else "
                             "a per-user directory under /tmp", help="control socket and embedded Redis's socket")
    explicit_state_dir: bool = False  # named in the file (else the CLI searches the candidates)
    data_dir: str = setting("", _string, doc_default="$STATE_DIRECTORY, else state_dir", help=(
        "the embedded Redis's append-only file"))
    log: LogConfig = setting(factory=LogConfig, help="logging")
    metrics: MetricsConfig = setting(factory=MetricsConfig, help="metrics, health and the page")
    health: HealthConfig = setting(factory=HealthConfig, help="when /healthz fails")
    max_payload: int = setting(1024 * 1024, parse_size, show=S, group="limits", help=(
        "the largest job payload accepted at enqueue (and read back by a worker)"))
    max_result: int = setting(64 * 1024, parse_size, show=S, group="limits", help=(
        "the largest result kept in a job's record (a larger one is noted in result_dropped)"))
    user: str | None = setting(None, _user, help=(
        "when the master runs as root, workers switch to this user after fork (not with the embedded Redis)"))
    group: str | None = setting(None, _group, help="... and group")
    limiters: Mapping[str, tuple[RateLimit, ...]] = setting(factory=dict, kind="mapping of name to limits", help=(
        "fleet-wide limits shared by queues (their limiters:) and handlers (governor.limit(name))"))
    host: HostGuards = setting(factory=HostGuards, help="guards on every step up of an elastic pool on this host")
    web: WebConfig = setting(factory=WebConfig, help="the page at / on metrics.listen")
    # environment variables interpolated into secret settings (is_secret): workers drop them
    secret_env: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The effective config, as YAML-ready data with units spelled out: each section as its
        declarations render it (``show``), in the order ``check`` has always printed them."""
        return {
            "redis": show(self.redis), "limits": show(self, "limits"),
            "user": self.user, "group": self.group, "app": show(self.app),
            "shutdown_timeout": D(self.shutdown_timeout), "lease": D(self.lease),
            "state_dir": self.state_dir, "data_dir": self.data_dir,
            "log": show(self.log), "metrics": show(self.metrics), "web": show(self.web),
            "health": show(self.health),
            "limiters": {name: _limits_dict(limits) for name, limits in self.limiters.items()},
            "host": show(self.host),
            "queues": {q.name: _queue_dict(q) for q in self.queues.values()},
        }


def _queue_dict(q: QueueConfig) -> dict[str, Any]:
    """A queue as ``check`` prints it: its reshaped keys, then its inherited settings."""
    return {"concurrency": {"min": q.autoscale.min, "max": q.autoscale.max} if q.autoscale else q.concurrency,
            **({"autoscale": show(q.autoscale)} if q.autoscale else {}),
            **({"command": list(q.command), "env": dict(q.env), "cwd": q.cwd,
                "stop_signal": signal_name(q.stop_signal), "protocol": q.protocol} if q.command else {}),
            "user": q.user, "group": q.group,
            "rate_limit": _limits_dict(q.rate_limits), "limiters": list(q.limiters),
            "global_concurrency": q.global_concurrency,
            "partitions": q.partitions, "partitions_per_host": q.partitions_per_host,
            **show(q.settings)}


def _limits_dict(limits: tuple[RateLimit, ...]) -> list[dict[str, Any]]:
    """Rate limits as ``check`` prints them; a window has no burst, so none is shown for it."""
    out = []
    for r in limits:
        shown: dict[str, Any] = {"limit": r.limit, "per": _format_per(r.per), "algorithm": r.algorithm}
        if r.algorithm == "token_bucket":
            shown["burst"] = r.burst
        out.append(shown)
    return out
