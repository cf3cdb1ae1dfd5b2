"""The frozen dataclasses a config file becomes, and ``Config.to_dict``, the effective
config as ``check`` prints it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from governor.config.render import _format_per, mask_url
from governor.config.values import signal_name
from governor.units import format_duration, format_size


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
