"""The settings a queue inherits from ``defaults`` (memory, timeout, recycle, retry,
done_ttl, jobs_per_worker), read over the inherited values; each mapping through its declarations (``read``),
with the cross-field rules (soft <= hard, an adaptive limit needs a hard one) by hand."""

from __future__ import annotations

from governor.config.declare import keys, read, read_one
from governor.config.schema import (
    AdaptiveTimeout,
    MemoryLimits,
    QueueSettings,
    RecyclePolicy,
    RetryPolicy,
    TimeoutLimits,
)
from governor.config.sections import ConfigError, _Section
from governor.units import format_duration, format_size

SETTING_KEYS = keys(QueueSettings)


def read_settings(sec: _Section, base: QueueSettings) -> QueueSettings:
    """Reads the inheritable keys of ``defaults`` or of one queue, over ``base``."""
    memory = _memory(sec.section("memory").expect(*keys(MemoryLimits)), base.memory)
    timeout = _timeout(sec.section("timeout").expect(*keys(TimeoutLimits)), base.timeout)
    rec = sec.section("recycle").expect(*keys(RecyclePolicy))
    recycle = RecyclePolicy(**read(RecyclePolicy, rec, base.recycle))
    rec.done()
    ret = sec.section("retry").expect(*keys(RetryPolicy))
    retry = RetryPolicy(**read(RetryPolicy, ret, base.retry))
    ret.done()
    done_ttl = read_one(QueueSettings, "done_ttl", sec, base.done_ttl)
    slots = read_one(QueueSettings, "jobs_per_worker", sec, base.jobs_per_worker)
    return QueueSettings(memory=memory, timeout=timeout, recycle=recycle, retry=retry, done_ttl=done_ttl,
                         jobs_per_worker=slots)


def _memory(mem: _Section, base: MemoryLimits) -> MemoryLimits:
    memory = MemoryLimits(**read(MemoryLimits, mem, base))
    mem.done()
    if memory.soft and memory.hard and memory.soft > memory.hard:
        raise ConfigError(mem.path, f"soft ({format_size(memory.soft)}) is above hard ({format_size(memory.hard)})")
    return memory


def _timeout(tmo: _Section, base: TimeoutLimits) -> TimeoutLimits:
    adaptive = base.adaptive
    if "adaptive" in tmo.data:
        adaptive = _adaptive(tmo, adaptive)
    timeout = TimeoutLimits(**read(TimeoutLimits, tmo, base), adaptive=adaptive)
    tmo.done()
    if adaptive and not timeout.hard:
        raise ConfigError(tmo.sub("adaptive"), "an adaptive limit replaces the hard limit once learnt, "
                                               "and falls back to it: set timeout.hard too")
    if timeout.soft and timeout.hard and timeout.soft > timeout.hard:
        raise ConfigError(tmo.path, f"soft ({format_duration(timeout.soft)}) is above hard ({format_duration(timeout.hard)})")
    return timeout


def _adaptive(tmo: _Section, base: AdaptiveTimeout | None) -> AdaptiveTimeout | None:
    """``timeout.adaptive``: ``off`` (none), ``on`` (the defaults), or a mapping over ``base``."""
    raw = tmo.data.get("adaptive")
    if raw is False or (isinstance(raw, str) and raw.strip().lower() in ("off", "none", "false", "no")):
        tmo.raw("adaptive")
        return None
    if raw is True or (isinstance(raw, str) and raw.strip().lower() in ("on", "true", "yes")):
        tmo.raw("adaptive")
        return base or AdaptiveTimeout()
    a = tmo.section("adaptive").expect(*keys(AdaptiveTimeout))
    out = AdaptiveTimeout(**read(AdaptiveTimeout, a, base or AdaptiveTimeout()))
    a.done()
    if out.min > out.max:
        raise ConfigError(a.path, f"min ({format_duration(out.min)}) is above max ({format_duration(out.max)})")
    return out
