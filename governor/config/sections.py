"""The reader of one YAML mapping: ConfigError, ``${VAR}`` interpolation, the secret
settings, and ``_Section``, which hands out its keys and rejects any left unread (with a
did-you-mean hint)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any


class ConfigError(ValueError):
    """A configuration problem; ``str()`` names the path, e.g. ``queues.email.concurrency: ...``."""

    def __init__(self, path: str, message: str, source: str | None = None) -> None:
        self.path = path
        self.message = message
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{path}: {message}" if path else f"{where}{message}")


_ENV = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}")


def is_secret(path: str) -> bool:
    """Settings that hold secrets: the Redis URL (it may carry a password), the web token, and
    anything named like a password or token. A variable interpolated into one of them is kept
    from the workers (their jobs may run as another user and must not read it from their
    environment)."""
    leaf = path.rsplit(".", 1)[-1]
    return path == "redis.url" or leaf in ("token", "password") or leaf.endswith("_password")


def interpolate(text: str, path: str, env: Mapping[str, str], used: set[str] | None = None) -> str:
    """``${VAR}``, ``${VAR:-default}`` (unset or empty), ``${VAR-default}`` (unset); ``$$`` is ``$``.
    The names of the variables read are added to ``used``."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, default = m.group(1), m.group(2), m.group(3)
        if used is not None:
            used.add(name)
        value = env.get(name)
        if op == ":-" and not value:
            return default
        if op == "-" and value is None:
            return default
        if value is None:
            raise ConfigError(path, f"environment variable {name} is not set (write ${{{name}:-default}} for a default)")
        return value

    return _ENV.sub(sub, text)


class _Section:
    """One mapping of the YAML file: hands out its keys and rejects any left unread."""

    def __init__(self, data: object, path: str, env: Mapping[str, str],
                 secrets: set[str] | None = None) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(path, f"expected a mapping, got {_show(data)}")
        self.data = dict(data)
        self.path = path
        self.env = env
        # names of the variables interpolated into secret settings, shared by every section
        self.secrets: set[str] = set() if secrets is None else secrets

    def sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, parse: Callable[[Any], Any], default: Any = None) -> Any:
        if key not in self.data:
            return default
        raw = self.data.pop(key)
        raw = self._expand(raw, self.sub(key))
        if raw is None:
            return default
        try:
            return parse(raw)
        except ConfigError:
            raise
        except (ValueError, TypeError) as exc:
            raise ConfigError(self.sub(key), str(exc)) from None

    def section(self, key: str) -> _Section:
        return _Section(self.data.pop(key, None), self.sub(key), self.env, self.secrets)

    def raw(self, key: str) -> Any:
        return self.data.pop(key, None)

    def _expand(self, value: Any, path: str) -> Any:
        if isinstance(value, str):
            return interpolate(value, path, self.env, self.secrets if is_secret(path) else None)
        if isinstance(value, list):
            return [self._expand(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    def done(self) -> None:
        if self.data:
            key = sorted(map(str, self.data))[0]
            raise ConfigError(self.sub(key), "unknown key" + _suggest(key, self.known))

    known: tuple[str, ...] = ()

    def expect(self, *keys: str) -> _Section:
        self.known = keys
        return self


def _suggest(key: str, known: tuple[str, ...]) -> str:
    import difflib

    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} (known keys: {', '.join(known)})" if known else hint


def _did_you_mean(word: str, options: Any) -> str:
    import difflib

    close = difflib.get_close_matches(word, list(options), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _show(value: object) -> str:
    return repr(value)
