"""The YAML file, turned into frozen dataclasses or a ConfigError naming the path.

Why so strict: an operator who types ``concurency: 8`` must hear about it at
``governor check`` time, not discover at 3 a.m. that the queue ran with one
worker. Every error therefore carries the dotted path and the bad value.
The result is immutable, so a reload is "parse a whole new Config, compare,
apply" and a bad file can never leave a half-applied config behind.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from governor import redisurl
from governor.config.paths import default_data_dir, default_state_dir
from governor.config.queues import (
    _COMMAND_KEYS,
    _PER_QUEUE_KEYS,
    _SETTING_KEYS,
    _command,
    _elastic,
    _named_limiters,
    _partitioning,
    _queue_limits,
)
from governor.config.render import mask_url
from governor.config.schema import (
    AdaptiveTimeout,
    AppConfig,
    Config,
    HealthConfig,
    HostGuards,
    LogConfig,
    MemoryLimits,
    MetricsConfig,
    QueueConfig,
    QueueSettings,
    RecyclePolicy,
    RedisConfig,
    RetryPolicy,
    TimeoutLimits,
    TlsConfig,
    WebConfig,
)
from governor.config.sections import ConfigError, _Section, _show
from governor.config.values import (
    _bool,
    _choice,
    _existing_file,
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
)
from governor.names import queue_name_problem
from governor.units import format_duration, format_size, parse_duration, parse_size


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


def _host(top: _Section) -> HostGuards:
    h = top.section("host").expect("min_available_memory", "max_cpu")
    guards = HostGuards(min_available_memory=h.get("min_available_memory", _optional(parse_size), None),
                        max_cpu=h.get("max_cpu", _percent("a CPU share"), None))
    h.done()
    return guards


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
