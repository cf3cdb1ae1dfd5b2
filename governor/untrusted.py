"""Decoding what was read from Redis: anyone with write access may have put it there.

A record written straight into Redis can be nested 100,000 deep (the C
decoder then raises RecursionError, which is not a ValueError and would
crash whatever did not expect it), or hold ``1e999`` or ``NaN``, which
Python turns into floats that poison arithmetic and that Lua's cjson refuses
to encode. Every reader of a job record or payload goes through ``loads``,
so all of them fail the same way: a ValueError that says what was wrong.
"""

from __future__ import annotations

import json
import math
from typing import Any


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


# one decoder for every call: json.loads with these hooks would build a new one each time
_DECODER = json.JSONDecoder(parse_float=_finite, parse_constant=_no_constants)


def loads(raw: bytes | str, what: str = "record") -> Any:
    """json.loads that raises only ValueError, naming ``what`` and the reason."""
    try:
        if isinstance(raw, (bytes, bytearray)):
            raw = raw.decode(json.detect_encoding(raw), "surrogatepass")
        return _DECODER.decode(raw)
    except RecursionError:
        raise ValueError(f"{what} is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} is not JSON ({exc})") from None


def bounded(value: Any, low: float, high: float) -> int | float | None:
    """``value`` if it is a number (not a bool) within [low, high], else None. A number read
    back from Redis can be anything a client wrote (a 400-digit integer overflows the first
    float it meets): every one is bounded before it is used."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if low <= value <= high else None
