"""Handlers of the jobs-in-flight tests (tests/test_inflight.py; issue 23): plain functions (they
run on a worker's pool of threads) and ``async def`` ones (tasks on its event loop), several
at once in one worker process. They record what ran as lines in the test's records directory
(TEST_RECORDS), or count in Redis, so a test can see overlap, order and who ran what."""

import asyncio
import os
import time

import redis

import governor

RECORDS = os.environ.get("TEST_RECORDS")  # the test's records directory (tests/harness/governor.py)


def _record(kind, *words):
    with open(os.path.join(RECORDS, kind), "a") as fh:
        fh.write(" ".join(str(w) for w in words) + "\n")


def _lines(kind):
    path = os.path.join(RECORDS, kind)
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return fh.read().splitlines()


def _runs(key):
    """How many runs of ``key`` have started before this one (its lines in 'start')."""
    return sum(1 for line in _lines("start") if line.split()[0] == key)


# -- overlap: each returns its worker's pid -------------------------------------------------

def nap(key, seconds):
    _record("start", key, os.getpid(), repr(time.time()))
    time.sleep(seconds)
    _record("done", key, os.getpid(), repr(time.time()))
    return os.getpid()


async def anap(key, seconds):
    _record("start", key, os.getpid(), repr(time.time()))
    await asyncio.sleep(seconds)
    _record("done", key, os.getpid(), repr(time.time()))
    return os.getpid()


# -- current_job(): asked before and after a wait, while neighbours run --------------------

def whoami(seconds):
    before = governor.current_job().id
    time.sleep(seconds)
    return [before, governor.current_job().id]


async def awhoami(seconds):
    before = governor.current_job().id
    await asyncio.sleep(seconds)
    return [before, governor.current_job().id]


# -- limits -----------------------------------------------------------------------------

def stuck(key):
    """Blocks in C for 100 s: an exception thrown into its thread waits for the call to return."""
    _record("start", key, os.getpid(), repr(time.time()))
    time.sleep(100)
    _record("done", key, os.getpid(), repr(time.time()))


def long_first_run(key, first, later):
    """Sleeps ``first`` seconds the first time it runs and ``later`` seconds after that."""
    seconds = first if _runs(key) == 0 else later
    _record("start", key, os.getpid(), repr(time.time()))
    time.sleep(seconds)
    _record("done", key, os.getpid(), repr(time.time()))
    return "slept"


async def swallow(key):
    """Catches every cancellation (and anything thrown in) and goes on, for up to 100 s."""
    _record("start", key, os.getpid(), repr(time.time()))
    end = time.monotonic() + 100
    while time.monotonic() < end:
        try:
            await asyncio.sleep(0.05)
        except BaseException:  # noqa: BLE001 (the point: a job that refuses to stop)
            _record("swallowed", key, repr(time.time()))
    _record("done", key, os.getpid(), repr(time.time()))


def soft_catcher(key, seconds):
    """Waits in short steps (so an exception thrown into its thread lands); on its soft limit
    returns "soft", else "normal"."""
    _record("start", key, os.getpid(), repr(time.time()))
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(0.01)
    except governor.SoftTimeLimitExceeded:
        _record("soft", key, repr(time.time()))
        return "soft"
    return "normal"


async def asoft_catcher(key, seconds):
    _record("start", key, os.getpid(), repr(time.time()))
    try:
        await asyncio.sleep(seconds)
    except governor.SoftTimeLimitExceeded:
        _record("soft", key, repr(time.time()))
        return "soft"
    return "normal"


def hog(key, mb, hold):
    """Once the sleepers have started (at most 5 s), allocates and touches ``mb`` MiB in 10 MiB
    steps, then holds it ``hold`` seconds."""
    deadline = time.monotonic() + 5
    while len(_lines("start")) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    _record("hogging", key, os.getpid(), repr(time.time()))
    chunks = []
    for _ in range(mb // 10):
        chunks.append(b"x" * (10 << 20))
        time.sleep(0.002)
    time.sleep(hold)
    _record("done", key, os.getpid(), repr(time.time()))
    return len(chunks)


# -- counted in Redis: how many run at once, how many started -------------------------------

_clients = {}


def _redis(url):
    client = _clients.get(url)
    if client is None:
        client = _clients[url] = redis.Redis.from_url(url)
    return client


def counted(url, prefix, seconds):
    """Counts itself running in Redis (INCR at start, DECR at end) and keeps the highest count
    seen; returns its master's pid (the worker's parent)."""
    r = _redis(url)
    n = r.incr(f"{prefix}:running")
    r.incr(f"{prefix}:starts")
    _raise_max(r, f"{prefix}:max", n)
    time.sleep(seconds)
    r.decr(f"{prefix}:running")
    return os.getppid()


async def acounted(url, prefix, seconds):
    r = _redis(url)
    n = r.incr(f"{prefix}:running")
    r.incr(f"{prefix}:starts")
    _raise_max(r, f"{prefix}:max", n)
    await asyncio.sleep(seconds)
    r.decr(f"{prefix}:running")
    return os.getppid()


_RAISE_MAX = "local m = tonumber(redis.call('GET', KEYS[1]) or '0') " \
             "if tonumber(ARGV[1]) > m then redis.call('SET', KEYS[1], ARGV[1]) end return 1"


def _raise_max(r, key, n):
    r.eval(_RAISE_MAX, 1, key, n)


def started(url, prefix, key, seconds):
    """Counts its start in Redis, runs ``seconds``, then records that it finished."""
    _redis(url).rpush(f"{prefix}:starts", key)
    time.sleep(seconds)
    _record("done", key, os.getpid(), repr(time.time()))
    return key
