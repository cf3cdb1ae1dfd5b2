"""Which code a job may run: the ``app.handlers`` allowlist, checked before any import.

Write access to Redis must not mean code execution. A job names its handler
as ``module:function``; the name is matched against the operator's fnmatch
patterns first, and only an allowed name is ever imported. Everything that
goes wrong here is the job's fault, not the worker's: it raises
``HandlerError`` with the reason the job is dead-lettered under.

Runs in: worker (and `governor check`).
"""

from __future__ import annotations

import fnmatch
import importlib
import re
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from governor.untrusted import loads

# No part may start with "_": private and dunder names (``tasks:__setattr__``) are never handlers.
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*:[A-Za-z][A-Za-z0-9_]*$")


class HandlerError(Exception):
    """The job cannot run; ``reason`` is the short code, ``str()`` the explanation."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Payload:
    """A job body, validated: what to call and with what."""

    __slots__ = ("handler", "args", "kwargs")

    def __init__(self, handler: str, args: list, kwargs: dict) -> None:
        self.handler, self.args, self.kwargs = handler, args, kwargs

    @classmethod
    def parse(cls, raw: bytes, max_size: int | None = None) -> Payload:
        """Raises HandlerError('malformed') saying exactly what is wrong with ``raw``, which
        came from Redis and is untrusted (bounded in size and nesting, finite numbers)."""
        if not raw:
            raise HandlerError("malformed", "malformed job: no payload")
        if max_size is not None and len(raw) > max_size:
            raise HandlerError("malformed", f"malformed job: payload is {len(raw)} bytes, over "
                                            f"limits.max_payload ({max_size})")
        try:
            body = loads(raw, "payload")
        except ValueError as exc:
            raise HandlerError("malformed", f"malformed job: {exc}") from None
        if not isinstance(body, dict):
            raise HandlerError("malformed", f"malformed job: payload is a JSON {type(body).__name__}, expected an object")
        handler = body.get("handler")
        if not isinstance(handler, str):
            raise HandlerError("malformed", f"malformed job: 'handler' must be a string, got {handler!r}")
        args, kwargs = body.get("args", []), body.get("kwargs", {})
        if not isinstance(args, list):
            raise HandlerError("malformed", f"malformed job: 'args' must be a list, got {type(args).__name__}")
        if not isinstance(kwargs, dict):
            raise HandlerError("malformed", f"malformed job: 'kwargs' must be an object, got {type(kwargs).__name__}")
        return cls(handler, args, kwargs)


class HandlerRegistry:
    """Resolves allowed handler names to callables, importing each module at most once."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = tuple(patterns)
        self._cache: dict[str, Callable[..., Any]] = {}

    def allowed(self, name: str) -> bool:
        return bool(_NAME.match(name)) and any(fnmatch.fnmatchcase(name, p) for p in self.patterns)

    def resolve(self, name: str) -> Callable[..., Any]:
        func = self._cache.get(name)
        if func is not None:
            return func
        if not _NAME.match(name):
            raise HandlerError("malformed", f"malformed job: handler {name!r} is not 'module:function' "
                                            "(names starting with '_' are never handlers)")
        if not self.allowed(name):
            raise HandlerError("not_allowed", f"handler {name!r} is not allowed by app.handlers {list(self.patterns)}")
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except BaseException as exc:  # an import may raise anything, even SystemExit
            if isinstance(exc, KeyboardInterrupt):
                raise
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            raise HandlerError("import_error", f"handler {name!r}: importing {module_name} failed: {detail}") from exc
        func = getattr(module, attr, None)
        if not callable(func):
            raise HandlerError("unknown_handler", f"handler {name!r}: {module_name} has no function {attr!r}")
        if getattr(func, "__module__", None) != module_name:
            # `tasks:check_output` must not reach subprocess.check_output imported into tasks
            raise HandlerError("not_allowed", f"handler {name!r}: {attr!r} is defined in "
                                              f"{getattr(func, '__module__', '?')}, not in {module_name}; "
                                              "only functions defined in the named module are handlers")
        self._cache[name] = func
        return func
