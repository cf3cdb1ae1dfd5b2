"""Signals as bytes on a wakeup fd (master process).

The handlers do nothing at all: the signal number arrives on a pipe the master's selector
watches, and the loop runs ``handle_<name>`` for it, where logging and Redis calls are safe.
"""

from __future__ import annotations

import os
import selectors
import signal
from typing import Any

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)


def _noop(signum: int, frame: Any) -> None:
    """Installed so the default action (death) does not happen; the wakeup fd carries the signal."""


class SignalPipe:
    """The wakeup pipe: installed once, read by the loop, closed on the way out."""

    def __init__(self) -> None:
        self.r = self.w = -1

    def install(self, selector: selectors.BaseSelector) -> None:
        """Routes HANDLED to the pipe and has ``selector`` watch it (its data: ``("signal", None)``)."""
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.w, warn_on_full_buffer=False)
        for sig in HANDLED:
            signal.signal(sig, _noop)
        selector.register(self.r, selectors.EVENT_READ, ("signal", None))

    def read(self) -> list[str]:
        """The signals that arrived since the last read, in order, as ``sigterm``, ``sighup``..."""
        try:
            data = os.read(self.r, 512)
        except BlockingIOError:
            return []
        return [signal.Signals(signum).name.lower() for signum in data]

    def close(self) -> None:
        if self.w >= 0:
            signal.set_wakeup_fd(-1)

    def fds(self) -> list[int]:
        """Its two ends (a forked worker closes them)."""
        return [self.r, self.w]
