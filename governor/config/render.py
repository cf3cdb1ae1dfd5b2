"""Values as ``governor check`` prints them: units spelled out, passwords masked."""

from __future__ import annotations

from governor import redisurl
from governor.units import format_duration, parse_duration


def _format_per(seconds: float) -> str:
    """``1m`` for 60.0, but never a rounded figure (format_duration shows 1.5ms as ``2ms``)."""
    text = format_duration(seconds)
    return text if parse_duration(text) == seconds else f"{seconds}s"


def mask_url(url: str) -> str:
    """Hide every password in a ``redis.url`` (``user:secret@``, Sentinel's ``secret@``,
    ``?password=``) so it never reaches a log, ``check`` or ``status``.

    Rendered from the same parse that connects (governor.redisurl), so the two cannot
    disagree about where a password ends."""
    return redisurl.mask(url)
