"""The master's children that are not workers, and what the workers' trees leave behind
(master process): the sentry, which freezes runs whose lease cannot be renewed and kills
every worker's tree if this master dies; the embedded Redis, restarted if it dies; and the
strays a dead worker's job left re-parented to the master (a subreaper).

Runs in: master.
"""

from __future__ import annotations

import logging
import os
import selectors
import time
from collections.abc import Callable, Mapping
from typing import Any

from governor.log import fields
from governor.supervise import proctree
from governor.supervise.pool import Pool
from governor.supervise.scoreboard import Scoreboard, margin
from governor.supervise.sentry import Sentry

log = logging.getLogger("governor.master")

SENTRY_RETRY = 5.0  # seconds between attempts to start a sentry that could not be started


class TreeGuard:
    """Keeps the sentry (and the embedded Redis) running beside the master, and kills what
    the workers' trees leave."""

    def __init__(self, *, sentry: Sentry, board: Scoreboard, selector: selectors.BaseSelector,
                 pools: Mapping[str, Pool], lease: float, master_pid: int, embedded: Any,
                 stopping: Callable[[], Any]) -> None:
        self.sentry, self.board, self.selector, self.pools = sentry, board, selector, pools
        self.lease, self.master_pid, self.embedded, self.stopping = lease, master_pid, embedded, stopping
        self.next_try = 0.0

    def configure(self, config: Any) -> None:
        """A reload: a changed lease is guarded as tightly as the old one."""
        if config.lease != self.lease:
            self.lease = config.lease
            self.sentry.set_check(margin(self.lease) / 2)

    def restart(self, now: float) -> None:
        """A sentry that could not be started is tried again (every SENTRY_RETRY)."""
        if not self.sentry.alive and self.sentry.fileno() < 0 and now >= self.next_try and not self.stopping():
            self.start()

    def close(self) -> None:
        if self.sentry.fileno() >= 0:  # workers gone (or SIGKILLed, tree and all): nothing to guard
            self.selector.unregister(self.sentry.fileno())
            self.sentry.close()

    def start(self) -> None:
        self.next_try = time.monotonic() + SENTRY_RETRY
        why = self.sentry.start(self.board.fileno(), check=margin(self.lease) / 2)
        if why:
            log.warning("no sentry (%s): until one starts (retried every %.0fs), a run whose lease "
                        "cannot be renewed is not frozen, and if this master is SIGKILLed its "
                        "workers die with it but their jobs' children may live on", why, SENTRY_RETRY,
                        extra=fields(reason="no_sentry"))
            return
        self.selector.register(self.sentry.fileno(), selectors.EVENT_READ, ("sentry", None))
        self.watch_all()
        log.debug("sentry %d watching this master's workers", self.sentry.pid)

    def on_exit(self) -> None:
        """The sentry died under us (killed by hand, by the OOM killer): until another is up, a
        SIGKILLed master would leave its workers stopped and their children running."""
        pid = self.sentry.pid
        self.selector.unregister(self.sentry.fileno())
        how = self.sentry.reap()
        log.error("sentry %d exited (%s); starting another", pid, how, extra=fields(reason="sentry_died"))
        self.start()

    def watch_all(self) -> None:
        """A new sentry takes every live worker (they were forked before it)."""
        for pool in self.pools.values():
            for w in pool.workers.values():
                self.sentry.watch(w.pid, w.pidfd, w.slot)

    def kill_strays(self) -> None:
        """What a dead worker's jobs left running was re-parented to us (a subreaper): a child
        that started a session of its own, a daemon. Killed, whole trees, before the job is
        requeued, so no part of the old run goes on beside the new one."""
        ours = {w.pid for pool in self.pools.values() for w in pool.workers.values()}
        ours.add(self.sentry.pid)
        if self.embedded and self.embedded.proc:
            ours.add(self.embedded.proc.pid)
        for pid in proctree.children(self.master_pid):
            if pid in ours:
                continue
            proctree.kill_tree(pid)
            for _ in range(50):  # SIGKILLed: gone within moments (never block the loop for long)
                try:
                    if os.waitpid(pid, os.WNOHANG)[0]:
                        break
                except ChildProcessError:
                    break
                time.sleep(0.001)

    def restart_embedded(self, now: float) -> None:
        """The embedded Redis died: started again at once (while the master is not stopping)."""
        if self.embedded and not self.embedded.alive() and not self.stopping():
            log.error("embedded redis-server died; restarting it")
            try:
                self.embedded.start()
            except RuntimeError as exc:
                log.error("%s", exc)


def take_the_host(boost: int) -> int | None:
    """What the master claims of its host before anything else runs: it becomes a subreaper
    (as the adoptive parent of what a dead worker's jobs leave running, it can kill that
    before the job runs again elsewhere: TreeGuard.kill_strays) and raises its priority
    ``boost`` nice levels above its workers where it may. Returns the priority it was started
    with: the workers'."""
    proctree.become_subreaper()
    nice, boosted = proctree.raise_priority(boost)
    if not boosted:
        log.info("running at the workers' priority (nice %d): not allowed to raise its own (root "
                 "or CAP_SYS_NICE, e.g. systemd's Nice=, AmbientCapabilities=); with more "
                 "busy workers than cores, limits are enforced late by the wait for a CPU", nice)
    return nice
