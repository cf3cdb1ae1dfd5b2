"""Forking a pool's workers, and what makes a worker outdated (master process).

A worker is handed everything it needs by fork (``worker.WorkerSpec``). The
Spawner builds that spec in one place (``spec_for``) and derives from the same
spec what a worker is compared on after a reload (``outdating_key``): listing
the settings that matter by hand is how a queue switched to ``user: nobody``
kept running jobs as root (issue 21, item 17). A new field of the spec is part
of the comparison unless it is declared here as the worker's own (its index,
slot, jittered recycle limits) or as the pool's business (how many workers).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from governor.identity import worker_id
from governor.log import fields
from governor.protocol.limits import rules_for
from governor.protocol.queue import QueueKeys
from governor.supervise import channel, fdbudget, worker
from governor.supervise.command import CommandWorker
from governor.supervise.commandflight import CommandFlightWorker
from governor.supervise.enforce import jittered_limits
from governor.supervise.flight import FlightWorker
from governor.supervise.partitions import HeldTable
from governor.supervise.pool import Pool
from governor.supervise.process import WorkerProcess
from governor.supervise.runtable import RunTable, pages_for
from governor.supervise.scoreboard import Scoreboard
from governor.supervise.sentry import Sentry

log = logging.getLogger("governor.master")

# Fields of a WorkerSpec that differ from one worker to the next, or belong to this master's
# life rather than to the config: never a reason to replace a worker.
PER_WORKER = frozenset({"index", "master_pid", "max_jobs", "max_age", "sentry", "board", "slot",
                        "held", "hint_key"})
# Fields of a QueueConfig that size the pool and never reach a worker.
POOL_ONLY = {"concurrency": 0, "autoscale": None, "partitions_per_host": None}


def outdating_key(spec: Any) -> tuple[tuple[str, Any], ...]:
    """Every setting a worker forked from ``spec`` runs with (compared with ==): two workers
    whose keys differ were forked from different configs, and the older must go."""
    key = []
    for f in dataclasses.fields(spec):
        if f.name in PER_WORKER:
            continue
        value = getattr(spec, f.name)
        if f.name == "queue":
            value = dataclasses.replace(value, **POOL_ONLY)
        key.append((f.name, value))
    return tuple(key)


def _limiters(cfg: Any) -> Any:
    return getattr(cfg, "limiters", {})


class Spawner:
    """Forks one worker at a time for the master: fd budget, scoreboard slot, socketpair,
    signal mask, fork, pidfd, sentry watch. Its dependencies come as arguments; it never
    touches the master's selector (the master registers what ``spawn`` returns)."""

    def __init__(self, *, config: Any, redis_url: str, master_pid: int, nice: int | None,
                 board: Scoreboard, sentry: Sentry, keys: Callable[[str], QueueKeys], master: str,
                 held: Callable[[str], HeldTable | None], owned_fds: Callable[[], list[int]]) -> None:
        self.config = config
        self.redis_url = redis_url
        self.master_pid = master_pid
        self.nice = nice
        self.board = board
        self.sentry = sentry
        self.keys = keys  # a queue's keys, for its hint list
        self.master = master  # this master's name in partition leases (its hint list's name)
        self.held = held  # a partitioned queue's table of partitions this master holds
        self.owned_fds = owned_fds  # descriptors of the master's a worker must close

    def configure(self, config: Any) -> None:
        """A reload: workers forked from now on get ``config``'s settings."""
        self.config = config

    def spec_for(self, q: Any, cfg: Any, **per_worker: Any) -> worker.WorkerSpec:
        """Everything a worker of ``q`` is forked with under ``cfg``: the one place that says
        it, so what makes a worker outdated (``settings_key``) is derived from it."""
        return worker.WorkerSpec(queue=q, app=cfg.app, redis_url=self.redis_url, tls=cfg.redis.tls,
                                 user=q.user or cfg.user, group=q.group or cfg.group,
                                 prefix=cfg.redis.prefix, lease=cfg.lease,
                                 max_payload=cfg.max_payload, max_result=cfg.max_result,
                                 rules=rules_for(cfg.redis.prefix, q, _limiters(cfg)),
                                 limiters=_limiters(cfg),
                                 hint_key=self.keys(q.name).hint_list(self.master),
                                 wait=(cfg.redis.wait_replicas, cfg.redis.wait_timeout),
                                 nice=self.nice, shutdown_timeout=cfg.shutdown_timeout,
                                 secret_env=cfg.secret_env, **{"index": 0, "master_pid": 0, **per_worker})

    def settings_key(self, q: Any, cfg: Any) -> Any:
        """What a worker of ``q`` is forked with under ``cfg``; when this changes, its workers
        are replaced (as they finish their jobs)."""
        return outdating_key(self.spec_for(q, cfg))

    def spawn(self, pool: Pool, now: float) -> WorkerProcess | None:
        """Forks one worker of ``pool`` and adds it to the pool; None (logged once, shown in
        status, retried) when the host refuses (out of descriptors, slots, memory): a master
        that cannot start a worker keeps governing the ones it has."""
        wp = self._fork(pool, now)
        if isinstance(wp, str):
            if pool.note_spawn_failure(now, wp):
                log.error("queue %s: cannot start a worker (%d of %d running): %s", pool.name,
                          len(pool.current()), pool.desired(), wp,
                          extra=fields(queue=pool.name, reason="spawn_failed"))
            return None
        return wp

    def _fork(self, pool: Pool, now: float) -> WorkerProcess | str:
        """The worker, or why it could not be started."""
        room, why = fdbudget.workers_that_fit()
        if room < 1:
            return why
        slots = pool.config.settings.jobs_per_worker
        many = slots > 1 and (not pool.config.command or pool.config.protocol == "jsonl")
        slot = self.board.allocate(pages_for(slots) if many else 1)
        if slot is None:
            return f"no room left in the scoreboard ({self.board.slots} pages) for another worker"
        try:
            master_end, worker_end = channel.pair()
        except OSError as exc:
            self.board.release(slot)
            return f"socketpair: {exc}"
        max_jobs, max_age = jittered_limits(pool.config.settings.recycle)
        spec = self.spec_for(pool.config, self.config, index=pool.free_index(), master_pid=self.master_pid,
                             max_jobs=max_jobs, max_age=max_age, sentry=self.sentry.alive,
                             board=self.board, slot=slot, held=self.held(pool.name))
        inherited = self.owned_fds() + [master_end.fileno()]
        # Until the child has its own handlers, a signal sent to it would run the master's
        # (and land in the master's wakeup fd): keep them blocked across fork; the worker
        # unblocks them once its handlers are installed.
        saved_mask = signal.pthread_sigmask(signal.SIG_BLOCK, worker.FORWARDED_SIGNALS)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, saved_mask)
            worker_end.close()
            master_end.close()
            return f"fork: {exc}"
        if pid == 0:
            worker.main(spec, worker_end, inherited,
                        _worker_class(bool(pool.config.command), many))
        signal.pthread_sigmask(signal.SIG_SETMASK, saved_mask)
        worker_end.close()
        try:
            os.setpgid(pid, pid)  # the child does the same; whichever runs first wins
        except OSError:
            pass
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:  # without a pidfd we could not see it die: take it back now
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            master_end.close()
            return f"pidfd_open: {exc}"
        self.sentry.watch(pid, pidfd, slot)  # at once: until then a SIGKILLed master leaves it stopped
        wp = WorkerProcess(pid=pid, wid=worker_id(pid), queue=pool.name, index=spec.index,
                           generation=pool.generation, sock=master_end, pidfd=pidfd, now=now)
        wp.slot = slot
        if many:
            wp.runs = RunTable(self.board, slot, slots)
            wp.grace = pool.config.settings.timeout.grace
        pool.workers[pid] = wp
        log.debug("spawned worker %r", wp)
        return wp


def _worker_class(command: bool, many: bool) -> type | None:
    """The loop a worker runs: a command pool's (with jobs_per_worker > 1 and protocol jsonl,
    ``many``: several jobs in the program at once), or a Python pool's with several jobs at
    once; None: the one-job worker."""
    if command:
        return CommandFlightWorker if many else CommandWorker
    return FlightWorker if many else None


def prepare_app(cfg: Any) -> None:
    """``app.path`` on sys.path and ``app.preload`` imported, in the master before it forks:
    workers share the preloaded pages copy-on-write."""
    for path in reversed(cfg.app.path):
        if path not in sys.path:
            sys.path.insert(0, path)
    for module in cfg.app.preload:
        importlib.import_module(module)
