"""What a queue (or limiter) may be called, and where governor's own keys live: one rule for the
config (``check``) and for the Client, so no name one of them accepts can reach keys the other
refuses, or someone else's keys.

A queue's keys are ``{prefix:NAME}:part`` and a partition's ``{prefix:NAME:N}:part``. Names
hold no ``:``, so no queue's keys are another queue's partition (``q:1`` would be partition 1
of ``q``). governor's own keys (the fleet registry, named limiters) use ``/`` after the prefix,
which neither a name nor a prefix (letters, digits, ``_.:-``) may hold: ``{prefix/fleet}``
can be no queue's, whatever the queue is called, under any prefix.
"""

from __future__ import annotations

import re

QUEUE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
QUEUE_NAME_RULE = "queue names are 1-64 letters, digits or _.- (no ':', which would name a partition)"
LIMITER_NAME_RULE = "limiter names are 1-64 letters, digits or _.-"


def queue_name_problem(name: object) -> str | None:
    """None for a valid queue (or limiter) name, else the rule it breaks."""
    if isinstance(name, str) and QUEUE_NAME.fullmatch(name):
        return None
    return QUEUE_NAME_RULE


def internal_tag(prefix: str, *parts: str) -> str:
    """The hash tag of one of governor's own objects, e.g. ``{prefix/fleet}``: a namespace no
    queue name can produce (see the module's docstring)."""
    return "{" + "/".join((prefix, *parts)) + "}"
