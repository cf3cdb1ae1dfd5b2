"""Demo handlers for etc/governor.yaml: enough to watch jobs flow, fail and retry."""

import random
import time


def hello(name="world"):
    """A quick job: returns a greeting (kept in the done record for done_ttl)."""
    return f"hello, {name}"


def resize(width, height, seconds=0.5):
    """Pretends to be slow, media-style work."""
    time.sleep(seconds)
    return {"width": width // 2, "height": height // 2}


def flaky(fail_rate=0.5):
    """Fails now and then, to show retries with backoff and, eventually, the dead-letter queue."""
    if random.random() < fail_rate:
        raise RuntimeError("the flaky service said no")
    return "ok"


def hog(mb=300):
    """Allocates far past its queue's memory.hard: the master kills it (memory_hard)."""
    chunks = []
    for _ in range(mb // 10):
        chunks.append(b"x" * (10 * 1024 * 1024))
        time.sleep(0.02)
    time.sleep(5)
    return len(chunks)


def stuck(seconds=30):
    """Ignores its soft time limit and overruns the hard one: the master kills it (timeout_hard)."""
    from governor import SoftTimeLimitExceeded
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        time.sleep(seconds)  # "cleanup" that never ends
