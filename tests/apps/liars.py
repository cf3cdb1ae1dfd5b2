"""Handlers that lie to the master from inside a worker: raw text on the worker's channel, a
scribbled scoreboard page (tests/test_untrusted_worker.py)."""

import gc
import mmap
import os
import socket
import time

RECORDS = os.environ.get("TEST_RECORDS")  # the test's records directory (tests/harness/governor.py)


def _record(kind, key):
    with open(os.path.join(RECORDS, kind), "a") as fh:
        fh.write(f"{key} {os.getpid()}\n")


def _channel():
    """The worker's end of its channel to the master: the one SEQPACKET socket we hold."""
    for name in os.listdir("/proc/self/fd"):
        try:
            s = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        if s.type == socket.SOCK_SEQPACKET:
            return s
        s.detach()
    raise RuntimeError("no channel found")


def say(key, message, then_sleep=0.0):
    """Writes ``message`` (raw text) on the channel as if the worker had said it."""
    _record("start", key)
    _channel().send(message.encode())
    time.sleep(then_sleep)
    _record("done", key)


def scribble(key, fill):
    """Overwrites every byte of the worker's scoreboard page with ``fill``."""
    _record("start", key)
    pages = [o for o in gc.get_objects() if isinstance(o, mmap.mmap)]
    for page in pages:
        try:
            page[:] = bytes([fill]) * len(page)
        except (ValueError, TypeError):
            pass
    time.sleep(3.0)  # the master looks while it runs (every 50 ms)
    _record("done", key)
