"""The YAML file, turned into frozen dataclasses or a ConfigError naming the path.

Why so strict: an operator who types ``concurency: 8`` must hear about it at
``governor check`` time, not discover at 3 a.m. that the queue ran with one
worker. Every error therefore carries the dotted path and the bad value.
The result is immutable, so a reload is "parse a whole new Config, compare,
apply" and a bad file can never leave a half-applied config behind.

Where things are: ``schema`` (the dataclasses), ``values`` (converters),
``sections`` (one YAML mapping, interpolation, errors), ``parse`` and ``queues``
(the file's sections and cross-field rules), ``load`` (the bounded file reader),
``render`` (what ``check`` prints), ``paths`` (state-dir defaults). This module
re-exports the names code outside the package imports.
"""

from governor.config.load import MAX_CONFIG_BYTES, MAX_CONFIG_VALUES, load_config
from governor.config.parse import parse_config
from governor.config.paths import default_data_dir, default_state_dir, state_dir_candidates
from governor.config.queues import MAX_PARTITIONS, command_problem
from governor.config.render import mask_url
from governor.config.schema import (
    AdaptiveTimeout,
    AppConfig,
    Autoscale,
    Config,
    HealthConfig,
    HostGuards,
    LogConfig,
    MemoryLimits,
    MetricsConfig,
    QueueConfig,
    QueueSettings,
    RateLimit,
    RecyclePolicy,
    RedisConfig,
    RetryPolicy,
    TimeoutLimits,
    TlsConfig,
    WebConfig,
)
from governor.config.sections import ConfigError, interpolate, is_secret
from governor.config.values import RATE_LIMIT_ALGORITHMS, signal_name

__all__ = [
    "MAX_CONFIG_BYTES", "MAX_CONFIG_VALUES", "MAX_PARTITIONS", "RATE_LIMIT_ALGORITHMS",
    "AdaptiveTimeout", "AppConfig", "Autoscale", "Config", "ConfigError", "HealthConfig",
    "HostGuards", "LogConfig", "MemoryLimits", "MetricsConfig", "QueueConfig", "QueueSettings",
    "RateLimit", "RecyclePolicy", "RedisConfig", "RetryPolicy", "TimeoutLimits", "TlsConfig",
    "WebConfig", "command_problem", "default_data_dir", "default_state_dir", "interpolate",
    "is_secret", "load_config", "mask_url", "parse_config", "signal_name", "state_dir_candidates",
]
