"""Sizes and durations as operators write them in YAML ("512MiB", "30s").

Kept apart from config so the CLI (``--delay 5m``) parses exactly the same
spellings the YAML file accepts.
"""

from __future__ import annotations

import math
import re

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4, "tb": 1000**4,
}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: object) -> int:
    """Bytes from ``512MiB``/``1GB``/``1048576``; raises ValueError naming the value."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 512MiB, got {value!r}")
    if isinstance(value, int) and value >= 0:
        return value
    m = _NUMBER_UNIT.match(str(value))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _SIZE_UNITS:
        raise ValueError(f"expected a size such as 512MiB (units B/KiB/MiB/GiB/KB/MB/GB), got {value!r}")
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


def parse_duration(value: object) -> float:
    """Seconds from ``30s``/``10m``/``250ms``; a bare number means seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 30s, got {value!r}")
    if isinstance(value, (int, float)) and value >= 0 and math.isfinite(value):
        return float(value)
    m = _NUMBER_UNIT.match(str(value))
    unit = m.group(2).lower() if m else None
    if not m or (unit and unit not in _DURATION_UNITS):
        raise ValueError(f"expected a duration such as 30s (units ms/s/m/h/d), got {value!r}")
    seconds = float(m.group(1)) * (_DURATION_UNITS[unit] if unit else 1.0)
    if not math.isfinite(seconds):
        raise ValueError(f"expected a finite duration, got {value!r}")
    return seconds


def format_size(n: int | None) -> str:
    """The largest unit that states ``n`` exactly (so ``check`` prints what the limit really is)."""
    if n is None:
        return "-"
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    if n >= 1024**2:
        return f"{n / 1024**2:.1f}MiB"
    return f"{n // 1024}KiB" if n % 1024 == 0 else f"{n}B"


def format_duration(s: float | None) -> str:
    if s is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size and s % size == 0:
            return f"{int(s // size)}{unit}"
    if s < 1 and s > 0:
        return f"{s * 1000:.0f}ms"
    return f"{s:g}s"


def format_age(seconds: float | None) -> str:
    """How long something has lasted, as status and the page show it: 4.2s, 37s, 3m05s, 2h07m."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
