"""Logging to stderr (journald and supervisord capture it), as text or JSON lines."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from governor.config import LogConfig

FIELDS = ("worker", "worker_pid", "queue", "job", "reason")


def fields(**values: object) -> dict[str, object]:
    """``extra=`` for a log call: structured fields in JSON logs, ignored by the text format."""
    return values


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                 "logger": record.name, "pid": record.process, "msg": record.getMessage()}
        for name in FIELDS:  # passed as extra=: what a log shipper filters on
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(cfg: LogConfig, level: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if cfg.format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        fmt = logging.Formatter("%(asctime)s.%(msecs)03d %(levelname)-7s [%(process)d] %(message)s",
                                "%Y-%m-%d %H:%M:%S")
        fmt.converter = time.localtime
        handler.setFormatter(fmt)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel((level or os.environ.get("GOVERNOR_LOG_LEVEL") or cfg.level).upper())
