"""Each setting declared once, as a dataclass field: its default, converter, renderer, bounds,
YAML name and help text in the field's metadata. Parsing (``read``), what ``check`` prints
(``show``) and docs/configuration.md are derived from these declarations, so a new simple
setting is one ``setting(...)`` line plus the code that uses it (gunicorn's and celery's
discipline, kept in plain dataclasses so the messages stay governor's own)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

from governor.config.sections import ConfigError, _Section

Parse = Callable[[Any], Any]


def setting(default: Any = dataclasses.MISSING, parse: Parse | None = None, *, help: str,
            show: Callable[[Any], Any] | None = None, key: str | None = None,
            group: str | None = None, low: float | None = None, high: float | None = None,
            bounds: str | None = None, factory: Callable[[], Any] | None = None,
            shown: bool = True, omit_none: bool = False, doc_default: str | None = None,
            kind: str | None = None, repr: bool = True) -> Any:
    """A dataclass field that is also a setting. ``parse`` is None for settings read by hand
    (their shape is not one value); ``key`` is the YAML name when it differs from the field's,
    ``group`` the sub-mapping it sits in (``redis.wait.replicas``); ``low``/``high`` are checked
    after the whole mapping is read, as ``bounds`` (text) says."""
    meta = {"parse": parse, "help": help, "show": show, "key": key, "group": group, "low": low,
            "high": high, "bounds": bounds, "shown": shown, "omit_none": omit_none,
            "doc_default": doc_default, "kind": kind}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta, repr=repr)
    return dataclasses.field(default=default, metadata=meta, repr=repr)


def declared(cls: type, group: str | None = None) -> Iterator[dataclasses.Field[Any]]:
    """The declared fields of ``cls`` in the mapping ``group`` (None: the class's own level)."""
    for f in dataclasses.fields(cls):
        if "help" in f.metadata and f.metadata["group"] == group:
            yield f


def yaml_key(f: dataclasses.Field[Any]) -> str:
    return f.metadata["key"] or f.name


def keys(cls: type, group: str | None = None) -> tuple[str, ...]:
    """The YAML keys of one mapping, in declaration order (a group counts as one key)."""
    out: list[str] = []
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        name = yaml_key(f) if f.metadata["group"] == group else f.metadata["group"]
        if group is None or f.metadata["group"] == group:
            if name not in out:
                out.append(name)
    return tuple(out)


def default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def read(cls: type, sec: _Section, base: Any = None, group: str | None = None) -> dict[str, Any]:
    """The simple settings of one mapping, in declaration order (so the first error reported
    is the first bad key in that order), over ``base``'s values or the declared defaults;
    then their bounds. The caller checks cross-field rules and calls ``sec.done()``."""
    out: dict[str, Any] = {}
    fields = [f for f in declared(cls, group) if f.metadata["parse"] is not None]
    for f in fields:
        fallback = getattr(base, f.name) if base is not None else default_of(f)
        out[f.name] = sec.get(yaml_key(f), f.metadata["parse"], fallback)
    for f in fields:
        check_bounds(f, out[f.name], sec)
    return out


def check_bounds(f: dataclasses.Field[Any], value: Any, sec: _Section) -> None:
    low, high = f.metadata["low"], f.metadata["high"]
    if value is None or (low is None or value >= low) and (high is None or value <= high):
        return
    show = f.metadata["show"] or str
    raise ConfigError(sec.sub(yaml_key(f)), f"expected {bounds_text(f)}, got {show(value)}")


def bounds_text(f: dataclasses.Field[Any]) -> str | None:
    if f.metadata["bounds"] or f.metadata["low"] is None:
        return f.metadata["bounds"]
    return f"at least {(f.metadata['show'] or str)(f.metadata['low'])}"


def show(obj: Any, group: str | None = None) -> dict[str, Any]:
    """One dataclass as ``check`` prints it: the declared renderers, nested sections as
    mappings, groups as sub-mappings, tuples as lists."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        meta = f.metadata
        if "help" not in meta or not meta["shown"]:
            continue
        value = getattr(obj, f.name)
        if value is None and meta["omit_none"]:
            continue
        if meta["group"] != group:
            if group is None and meta["group"] not in out:
                out[meta["group"]] = show(obj, meta["group"])
            continue
        if meta["show"] is not None:
            value = meta["show"](value)
        elif dataclasses.is_dataclass(value):
            value = show(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[yaml_key(f)] = value
    return out


def read_one(cls: type, name: str, sec: _Section, default: Any = dataclasses.MISSING) -> Any:
    """One declared setting of ``sec`` (a key read among hand-written ones), bounds checked
    at once; ``default`` replaces the declared one (an inherited value, or None for "unset")."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    value = sec.get(yaml_key(f), f.metadata["parse"], default_of(f) if default is dataclasses.MISSING else default)
    check_bounds(f, value, sec)
    return value
