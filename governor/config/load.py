"""Reading the file: bounded in size and in values (an alias bomb), then parsed."""

from __future__ import annotations

from collections.abc import Mapping

import yaml

from governor.config.parse import parse_config
from governor.config.schema import Config
from governor.config.sections import ConfigError
from governor.units import format_size

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
