"""The YAML file, turned into frozen dataclasses or a ConfigError naming the path.

Why so strict: an operator who types ``concurency: 8`` must hear about it at
``governor check`` time, not discover at 3 a.m. that the queue ran with one
worker. Every error therefore carries the dotted path and the bad value.
The result is immutable, so a reload is "parse a whole new Config, compare,
apply" and a bad file can never leave a half-applied config behind.

Simple settings are read through their declarations (schema, ``read``); what is written
here by hand is what is not one plain value: inheritance from ``defaults``, a queue's shape,
and the cross-field rules. Sections are read in a fixed order, so the first error reported
for a file is always the same one.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from governor import redisurl
from governor.config.declare import keys, read, read_one
from governor.config.paths import default_data_dir, default_state_dir
from governor.config.queues import (
    _COMMAND_KEYS,
    _PER_QUEUE_KEYS,
    _command,
    _elastic,
    _named_limiters,
    _partitioning,
    _queue_limits,
)
from governor.config.render import mask_url
from governor.config.schema import (
    AppConfig,
    Config,
    HealthConfig,
    HostGuards,
    LogConfig,
    MetricsConfig,
    QueueConfig,
    QueueSettings,
    RateLimit,
    RedisConfig,
    TlsConfig,
    WebConfig,
)
from governor.config.sections import ConfigError, _Section, _show
from governor.config.settings import SETTING_KEYS, read_settings
from governor.config.values import _existing_file
from governor.names import queue_name_problem

_TOP_KEYS = ("redis", "app", "defaults", "queues", "shutdown_timeout", "lease", "state_dir", "data_dir",
             "log", "metrics", "limits", "user", "group", "health", "limiters", "host", "web")


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
    top = _Section(data, "", env).expect(*_TOP_KEYS)
    base_dir = Path(source).resolve().parent if source and not source.startswith("<") else Path.cwd()
    redis = _redis(top.section("redis").expect(*keys(RedisConfig)), base_dir)
    ap = top.section("app").expect(*keys(AppConfig))
    app = AppConfig(**read(AppConfig, ap))
    app = dataclasses.replace(app, path=tuple(str((base_dir / p).resolve()) for p in app.path))
    ap.done()
    defaults = _defaults(top.section("defaults").expect(*SETTING_KEYS))
    named_limiters = _named_limiters(top.get("limiters", lambda v: v), env)
    user = read_one(Config, "user", top)
    group = read_one(Config, "group", top)
    lim = top.section("limits").expect(*keys(Config, "limits"))
    limits = read(Config, lim, group="limits")
    lim.done()
    queues = _queues(top, redis, base_dir, defaults, named_limiters, (user, group))
    fields = _rest(top, source, base_dir)
    top.done()
    return Config(source=source, redis=redis, app=app, queues=queues, **fields, **limits,
                  user=user, group=group, limiters=named_limiters,
                  secret_env=tuple(sorted(top.secrets)))


def _redis(red: _Section, base_dir: Path) -> RedisConfig:
    tls_sec = red.section("tls").expect(*keys(TlsConfig))
    tls = TlsConfig(**{f.name: tls_sec.get(f.name, _existing_file(base_dir), None)
                       for f in dataclasses.fields(TlsConfig)})
    tls_sec.done()
    wait = red.section("wait").expect(*keys(RedisConfig, "wait"))
    waits = read(RedisConfig, wait, group="wait")
    wait.done()
    redis = RedisConfig(**read(RedisConfig, red), tls=tls, **waits)
    red.done()
    if not redis.embedded:
        try:
            redisurl.parse(redis.url)  # what check accepts, redis-py reads the same way
        except redisurl.RedisURLError as exc:
            raise ConfigError("redis.url", f"{exc}; got {mask_url(redis.url)!r}") from None
    if not re.fullmatch(r"[A-Za-z0-9_.:-]+", redis.prefix):
        raise ConfigError("redis.prefix", f"expected letters, digits and _.:- only, got {redis.prefix!r}")
    return redis


def _defaults(sec: _Section) -> QueueSettings:
    defaults = read_settings(sec, QueueSettings())
    for key in _PER_QUEUE_KEYS:
        if key in sec.data:  # each queue would get a limit of its own: easily mistaken for a shared one
            share = (" (to share one limit between queues, define it in the top-level limiters: and name it in "
                     "each queue's limiters:)") if key == "rate_limit" else ""
            raise ConfigError(sec.sub(key), f"set per queue, not in defaults{share}")
    sec.done()
    return defaults


def _queues(top: _Section, redis: RedisConfig, base_dir: Path, defaults: QueueSettings,
            named: Mapping[str, tuple[RateLimit, ...]], account: tuple[str | None, str | None],
            ) -> dict[str, QueueConfig]:
    raw = top.raw("queues")
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("queues", f"expected a mapping of queue name to settings, got {_show(raw)}")
    queues: dict[str, QueueConfig] = {}
    for name, body in raw.items():
        path = f"queues.{name}"
        problem = queue_name_problem(name)
        if problem:
            raise ConfigError(path, problem)
        if isinstance(body, int) and not isinstance(body, bool):
            body = {"concurrency": body}
        q = _Section(body, path, top.env).expect(
            "concurrency", "autoscale", "user", "group", *SETTING_KEYS, *_PER_QUEUE_KEYS, *_COMMAND_KEYS)
        queues[name] = _queue(q, name, redis, base_dir, defaults, named, account)
    return queues


def _queue(q: _Section, name: str, redis: RedisConfig, base_dir: Path, defaults: QueueSettings,
           named: Mapping[str, tuple[RateLimit, ...]], account: tuple[str | None, str | None]) -> QueueConfig:
    concurrency, autoscale = _elastic(q)
    command = _command(q, base_dir)
    user = read_one(QueueConfig, "user", q, account[0])
    group = read_one(QueueConfig, "group", q, account[1])
    own_slots = "jobs_per_worker" in q.data  # (read_settings takes the keys it reads)
    settings = read_settings(q, defaults)
    if settings.jobs_per_worker > 1 and command.get("command") and not command.get("protocol"):
        where = q.sub("jobs_per_worker") if own_slots else "defaults.jobs_per_worker"
        raise ConfigError(where, f"{settings.jobs_per_worker} jobs at once need a program that takes jobs: "
                                 f"queue {name!r} runs a command without protocol: jsonl (set it, or "
                                 "jobs_per_worker: 1 for this queue)")
    rate_limits, limiters, global_concurrency = _queue_limits(q, named)
    partitions, per_host = _partitioning(q, bool(rate_limits or limiters or global_concurrency))
    if limiters and redisurl.is_cluster(redis.url):
        raise ConfigError(q.sub("limiters"), "on Redis Cluster a queue's starts cannot count against a "
                                             "named limiter (it lives in another slot than the queue): "
                                             "give the queue its own rate_limit, or call "
                                             "governor.limit(name) in the handler")
    q.done()
    if (user or group) and redis.embedded:
        raise ConfigError(q.sub("user") if user else q.sub("group"),
                          "dropping privileges needs your own Redis: the embedded one listens on a "
                          "socket private to the master's user")
    return QueueConfig(name=name, concurrency=concurrency, settings=settings, user=user, group=group,
                       rate_limits=rate_limits, limiters=limiters, global_concurrency=global_concurrency,
                       partitions=partitions, partitions_per_host=per_host, autoscale=autoscale, **command)


def _rest(top: _Section, source: str, base_dir: Path) -> dict[str, Any]:
    """The keys after ``queues``: timing, directories and the master's own services."""
    shutdown_timeout = read_one(Config, "shutdown_timeout", top)
    lease = read_one(Config, "lease", top)
    state_dir = read_one(Config, "state_dir", top, None)
    explicit_state_dir = bool(state_dir)
    # abspath, not resolve(): a symlink in place of the directory must reach the state-dir
    # checks (which refuse it) rather than be silently followed here
    state_dir = os.path.abspath(base_dir / state_dir) if state_dir else default_state_dir(source)
    data_dir = read_one(Config, "data_dir", top, None)
    data_dir = os.path.abspath(base_dir / data_dir) if data_dir else default_data_dir(state_dir)
    out: dict[str, Any] = {"shutdown_timeout": shutdown_timeout, "lease": lease, "state_dir": state_dir,
                           "explicit_state_dir": explicit_state_dir, "data_dir": data_dir}
    for key, cls in (("log", LogConfig), ("metrics", MetricsConfig), ("health", HealthConfig),
                     ("host", HostGuards), ("web", WebConfig)):
        sec = top.section(key).expect(*keys(cls))
        out[key] = cls(**read(cls, sec))
        sec.done()
    if out["web"].token and not out["metrics"].listen:
        raise ConfigError("web.token", "the page is served on metrics.listen: set that too")
    return out
