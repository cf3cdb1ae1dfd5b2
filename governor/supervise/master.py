"""The arbiter: one single-threaded loop over a selector that keeps every pool at its size.

Events arrive as file descriptors: signals through the wakeup fd, worker
messages through their socketpairs, worker deaths through pidfds (so only
processes this master forked are ever reaped), ``governor status`` through
the control socket. After each batch of events the loop reconciles every
pool (desired minus actual) and runs its timers. Signal handlers do nothing
at all: the signal number arrives on the wakeup fd and ``handle_<name>``
runs from the loop, where logging and Redis calls are safe.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import selectors
import signal
import socket
import sys
import time
from typing import Any

import redis

from governor import __version__
from governor.config import Config, ConfigError, load_config, mask_url
from governor.identity import worker_id
from governor.log import fields
from governor.ops.control import ControlServer
from governor.ops.httpd import HttpServer
from governor.ops.metrics import CONTENT_TYPE, DURATION_BUCKETS, Metrics
from governor.ops.systemd import Notifier
from governor.ops.web import WebPage
from governor.protocol.connection import connect, is_cluster, resolve_url, socket_fds
from governor.protocol.queue import Client, run
from governor.supervise import channel, fdbudget, proctree, statedir
from governor.supervise.autoscale import Autoscaler
from governor.supervise.embedded import EmbeddedRedis
from governor.supervise.exits import Stopping, classify_exit, lost_job
from governor.supervise.governance import (
    LEAVE_MARGIN,
    enforce_hard_deadlines,
    enforce_leaving,
    max_concurrent_recycles,
    sample_memory,
)
from governor.supervise.handlerstats import HandlerStats
from governor.supervise.housekeeping import GARBLED, Housekeeper, all_lanes
from governor.supervise.partitions import PartitionLeases
from governor.supervise.pool import Pool
from governor.supervise.process import State, WorkerProcess
from governor.supervise.registry import FleetRegistry
from governor.supervise.reload import plan_reload
from governor.supervise.reports import WorkerReports
from governor.supervise.scoreboard import Scoreboard, margin
from governor.supervise.spawner import Spawner

log = logging.getLogger("governor.master")



LATE_MEMORY = 10.0  # seconds /healthz keeps reporting a late loop, so a probe can see it
SENTRY_RETRY = 5.0  # seconds between attempts to start a sentry that could not be started
MASTER_BOOST = 10  # nice levels the master raises itself above its workers, where it may
SPAWN_SLICE = 0.02  # seconds of forking per pass of the loop before it looks at its timers again
MASTER_REDIS_TIMEOUT = 1.0  # seconds; a healthy Redis answers the master's calls in milliseconds
PROBE_TIMEOUT = 0.2  # seconds; "is Redis back?" asked while it is away, once a second


def _watchdog_interval() -> float:
    """Half of systemd's WatchdogSec (WATCHDOG_USEC), if the watchdog is meant for us."""
    usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or (pid and pid != str(os.getpid())):
        return 0.0
    return int(usec) / 2e6






def _running(pid: int) -> bool:
    """Not yet exited (a zombie counts as exited); never reaps."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:
        return False


def _noop(signum: int, frame: Any) -> None:
    """Installed so the default action (death) does not happen; the wakeup fd carries the signal."""


class Master:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.pid = os.getpid()
        self.started = time.monotonic()
        self.pools: dict[str, Pool] = {}
        self.selector = selectors.DefaultSelector()
        self.stopping: Stopping | None = None
        self.stop_deadline = 0.0
        self.embedded = EmbeddedRedis(config.state_dir, config.data_dir) if config.redis.embedded else None
        self.redis_url = resolve_url(config.redis.url, config.state_dir)
        self.redis: redis.Redis | None = None
        self.control: ControlServer | None = None
        self._sig_r = self._sig_w = -1
        self.notifier = Notifier()
        self._ready_sent = False
        self.watchdog_interval = _watchdog_interval()
        self.next_watchdog = 0.0
        self.finished = 0  # job runs that ended, for the jobs/s in systemd's STATUS
        self._rate_mark = (time.monotonic(), 0)
        self.last_progress = 0.0  # monotonic time a job or worker last finished (drain progress)
        self.next_extend = 0.0
        self.late = (-1e9, 0.0)  # (when, how late) the loop last woke more than max_loop_lag late
        self.metrics = Metrics(self._metrics_state)
        self.http: HttpServer | None = None
        self.house: Housekeeper | None = None
        self.partitions: PartitionLeases | None = None
        self.registry: FleetRegistry | None = None
        self.web: WebPage | None = None
        self.state_lock = statedir.MasterLock(config.state_dir)
        self.sentry = proctree.Sentry()  # kills every worker's tree if this master dies
        self.next_sentry_try = 0.0
        # per worker: lease deadlines (guarded by the sentry) and its report (read on our clock)
        self.board = Scoreboard(buckets=DURATION_BUCKETS)
        self.scaler = Autoscaler(config.host, on_decision=self._on_scale)
        self.nice: int | None = None  # the priority we were started with: the workers' (ours is raised)
        self.spawn_pending = False  # a burst of spawns was cut short: the loop comes back at once
        self.strays_due = False  # a worker was reaped: what its tree left re-parented to us dies
        self.reports = WorkerReports(self.board, self.metrics, self._on_finished, self._on_lie)

    # -- start and stop ---------------------------------------------------------

    def run(self) -> int:
        soft, hard = fdbudget.raise_soft_limit()
        log.debug("open-file limit %d (hard %d)", soft, hard)
        try:
            self._start()
            self._loop()
        finally:
            self._cleanup()  # also when start-up failed half way: no orphaned embedded Redis
        log.info("governor master %d stopped", self.pid)
        return 0

    def _start(self) -> None:
        # Before anything is written in state_dir: refused unless only we can write in it,
        # then held, so a second master stops here rather than take over this one's Redis.
        statedir.prepare(self.config.state_dir, "state_dir")
        if self.embedded:
            statedir.prepare(self.config.data_dir, "data_dir")
        self.state_lock.acquire()
        # as the adoptive parent of what a dead worker's jobs leave running, the master can kill
        # it before the job runs again elsewhere (see _kill_strays)
        proctree.become_subreaper()
        # before the sentry is forked: it guards leases on the master's priority
        self.nice, boosted = proctree.raise_priority(MASTER_BOOST)
        if not boosted:
            log.info("running at the workers' priority (nice %d): not allowed to raise its own (root "
                     "or CAP_SYS_NICE, e.g. systemd's Nice=, AmbientCapabilities=); with more "
                     "busy workers than cores, limits are enforced late by the wait for a CPU", self.nice)
        self._start_sentry()  # also as pid 1: besides the trees of a dead master, it guards leases
        self._prepare_app(self.config)
        if self.embedded:
            self.embedded.start()
        # short: every Redis call blocks the loop that enforces hard time limits
        self.redis = connect(self.redis_url, socket_timeout=MASTER_REDIS_TIMEOUT, name="governor-master",
                             tls=self.config.redis.tls, socket_connect_timeout=MASTER_REDIS_TIMEOUT)
        probe = connect(self.redis_url, socket_timeout=PROBE_TIMEOUT, name="governor-master-probe",
                        tls=self.config.redis.tls, socket_connect_timeout=PROBE_TIMEOUT)
        for client, window in ((self.redis, MASTER_REDIS_TIMEOUT), (probe, PROBE_TIMEOUT)):
            if is_cluster(client):  # ride out a failover in the housekeeper's passes, not in one call
                client.failover_window = window
        self.house = Housekeeper(self.redis, self.config.redis.prefix, self.config.lease, self.board,
                                 on_lease_lost=self._on_lease_lost, on_thaw=self._on_thaw, probe=probe,
                                 on_error=self.metrics.redis_errors.inc)
        self.house.on_ready = self._hint_idle
        self.handlers = HandlerStats(self.redis, self.house.keys)
        self.registry = FleetRegistry(self.redis, self.config.redis.prefix, worker_id(self.pid), self.config.lease,
                                      self._fleet_record)
        self.partitions = PartitionLeases(self.redis, self.config.redis.prefix, worker_id(self.pid),
                                          self.config.lease)
        self.spawner = Spawner(config=self.config, redis_url=self.redis_url, master_pid=self.pid, nice=self.nice,
                               board=self.board, sentry=self.sentry, keys=self.house.keys,
                               master=self.partitions.master, held=self.partitions.table,
                               owned_fds=self._owned_fds)
        self._install_signals()
        self.control = ControlServer(self.config.state_dir, {"status": self.status})
        self.control.attach(self.selector)
        if self.config.metrics.listen:
            self.web = WebPage(Client(self.redis, self.config.redis.prefix), self.config.web.token,
                               lambda: self.house.redis_ok,
                               lambda: [p.config for p in self.pools.values()],
                               lambda: {name: self.house.stats(name, time.monotonic()) for name in self.pools},
                               (worker_id(self.pid), self._fleet_record))
            self.http = HttpServer(self.config.metrics.listen,
                                   {"/metrics": self._serve_metrics, "/healthz": self._serve_health,
                                    "/": self.web.page}, posts={"/action": self.web.action},
                                   guarded=("/", "/action"), hosts=lambda: self.config.web.hosts)
            self.web.on_view = self.http.resume  # a page waiting for its view is answered
            self.http.attach(self.selector)
            log.info("metrics on http://%s/metrics", self.config.metrics.listen)
        for q in self.config.queues.values():
            self.pools[q.name] = Pool(q, self.spawner.settings_key(q, self.config))
            self.metrics.prime(q.name)
        self.partitions.sync(self.pools)
        self.house.recover_predecessor(self.pools)
        self._register_queues()
        log.info("governor master %d starting: redis %s, queues %s", self.pid,
                 mask_url(self.config.redis.url),
                 ", ".join(f"{q.name}={q.autoscale.min}-{q.autoscale.max}" if q.autoscale
                           else f"{q.name}={q.concurrency}" for q in self.config.queues.values()))

    def _prepare_app(self, cfg: Config) -> None:
        for path in reversed(cfg.app.path):
            if path not in sys.path:
                sys.path.insert(0, path)
        for module in cfg.app.preload:
            importlib.import_module(module)  # before fork: workers share its pages copy-on-write

    def _install_signals(self) -> None:
        self._sig_r, self._sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._sig_w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
            signal.signal(sig, _noop)
        self.selector.register(self._sig_r, selectors.EVENT_READ, ("signal", None))

    def _cleanup(self) -> None:
        if self._sig_w >= 0:
            signal.set_wakeup_fd(-1)
        if self.control:
            self.control.close()
        if self.http:
            self.http.close()
        self._kill_all()
        if self.partitions:
            self.partitions.release_all("master stopped")
        if self.registry and self.house and self.house.redis_ok:
            try:
                self.registry.leave()
            except (redis.RedisError, *GARBLED):
                pass  # our record expires with the lease instead
        if self.sentry.fileno() >= 0:  # workers gone (or SIGKILLed, tree and all): nothing to guard
            self.selector.unregister(self.sentry.fileno())
            self.sentry.close()
        if self.embedded:
            self.embedded.stop()
        self.state_lock.release()  # last: the next master may start its Redis on this directory

    # -- the loop ----------------------------------------------------------------

    def _loop(self) -> None:
        woke = time.monotonic()
        while True:
            now = time.monotonic()
            self._timers(now)
            self._reconcile(now)
            if not self._ready_sent and not self.stopping and self._pools_ready():
                self._ready_sent = True
                self.next_watchdog = now  # the watchdog runs from READY=1 on
                self.notifier.ready(self._summary())
                log.info("all pools up: %s", self._summary())
            if self.stopping and not any(p.workers for p in self.pools.values()):
                self.house.settle_lost()
                return
            self._notify_systemd(now)
            # A pass that took long (a slow Redis call or client) delays every deadline after it
            self._note_lateness(time.monotonic() - woke)
            planned = self._next_wakeup(now)
            events = self.selector.select(max(0.0, planned - time.monotonic()))
            woke = time.monotonic()
            # ...and so does waking after the planned time (a stopped process, a starved CPU)
            lag = max(0.0, woke - planned)
            self.metrics.loop_lag.set(lag)
            self._note_lateness(lag)
            for key, mask in events:
                if self.selector.get_map().get(key.fd) is not key:
                    continue  # closed earlier in this batch (a worker reaped before its channel's event)
                kind, wp = key.data
                if kind == "channel":
                    self._on_channel(wp)
                elif kind == "exit":
                    self._on_exit(wp)
                    # a wave of kills is reaped one by one: deadlines that fall meanwhile are
                    # not left until the whole wave is read
                    enforce_hard_deadlines(self.pools.values(), time.monotonic())
                elif kind == "signal":
                    self._on_signals()
                elif kind == "sentry":
                    self._on_sentry_exit()
                elif kind == "serve":  # the control socket, the metrics port, their connections
                    wp.on_event(key.fileobj, mask)
            if self.strays_due:  # once per batch of exits; their jobs are requeued on the next pass
                self.strays_due = False
                self._kill_strays()

    def _kill_all(self, warn: str | None = None) -> None:
        """SIGKILL every worker not already dying; their jobs are requeued as they are reaped."""
        for pool in self.pools.values():
            for w in pool:
                if w.state is not State.STOPPING:
                    if warn:
                        log.warning("worker %r %s", w, warn)
                    w.kill("shutdown")

    def _note_lateness(self, seconds: float) -> None:
        if seconds > self.config.health.max_loop_lag:
            self.late = (time.monotonic(), seconds)

    def _pools_ready(self) -> bool:
        return all(sum(1 for w in p.current() if w.state is not State.STARTING) >= p.desired()
                   or p.backoff for p in self.pools.values())

    def _summary(self) -> str:
        """One line for systemd's STATUS=: workers, throughput, backlog."""
        now = time.monotonic()
        workers = sum(len(p.taking_work()) for p in self.pools.values())
        busy = sum(1 for p in self.pools.values() for w in p if w.job)
        mark_t, mark_n = self._rate_mark
        rate = (self.finished - mark_n) / (now - mark_t) if now - mark_t > 0.5 else 0.0
        if now - mark_t >= 10.0:
            self._rate_mark = (now, self.finished)
        waiting = self.house.waiting()
        backing_off = [p.name for p in self.pools.values() if p.backoff]
        line = f"{workers} workers ({busy} busy), {rate:.1f} jobs/s, {waiting} waiting"
        return line + (f", backing off: {', '.join(backing_off)}" if backing_off else "")

    def _next_wakeup(self, now: float) -> float:
        times = [self.house.next_wakeup(now), self.partitions.next_wakeup(now), self.reports.next_scan,
                 self.scaler.next_wakeup(now, self.pools)]
        if self.house.redis_ok:  # (while Redis is away the housekeeper's probe says when it is back)
            times.append(self.registry.next_wakeup())
            if not self.stopping:
                times.append(self.handlers.next_wakeup())
        if self.spawn_pending or (self.web and self.web.busy()):
            times.append(now)
        if self.stopping is Stopping.GRACEFUL and self.stop_deadline > now:
            times.append(self.stop_deadline)
        if self.watchdog_interval and self._ready_sent:
            times.append(self.next_watchdog)
        if self.stopping is Stopping.GRACEFUL and self.notifier.enabled:
            times.append(self.next_extend)
        for pool in self.pools.values():
            if pool.delta() > 0 and pool.respawn_at > now:
                times.append(pool.respawn_at)
            if pool.workers:
                times.append(pool.next_sample)
            for w in pool.workers.values():
                deadline = w.hard_deadline()
                if deadline is not None:
                    times.append(deadline)
        for server in (self.control, self.http):
            deadline = server.next_deadline() if server else None
            if deadline is not None:
                times.append(deadline)
        return min(times)

    # -- signals -----------------------------------------------------------------

    def _on_signals(self) -> None:
        try:
            data = os.read(self._sig_r, 512)
        except BlockingIOError:
            return
        for signum in data:
            name = signal.Signals(signum).name.lower()
            handler = getattr(self, f"handle_{name}", None)
            if handler:
                handler()

    def handle_sigterm(self) -> None:
        """Graceful drain: no new jobs; in-flight jobs get shutdown_timeout to finish."""
        if self.stopping:
            return
        self.stopping = Stopping.GRACEFUL
        self.notifier.stopping()
        self.stop_deadline = time.monotonic() + self.config.shutdown_timeout
        self.partitions.release_all("draining")  # other masters take them now, not after the lease
        busy = sum(1 for p in self.pools.values() for w in p if w.job)
        log.info("SIGTERM: draining; %d job(s) in flight get up to %.0fs", busy, self.config.shutdown_timeout)

    def handle_sigint(self) -> None:
        """Fast stop: kill every worker now; their jobs go back to the queue at once."""
        if self.stopping is Stopping.FAST:
            return
        self.stopping = Stopping.FAST
        self.notifier.stopping()
        log.info("fast stop: killing workers, requeueing their jobs")
        self.partitions.release_all("stopping")
        self._kill_all()

    handle_sigquit = handle_sigint

    def handle_sighup(self) -> None:
        """Reload the YAML; a bad file changes nothing."""
        if self.stopping:
            return
        self.notifier.reloading()
        try:
            new = load_config(self.config.source)
        except ConfigError as exc:
            log.error("reload failed, keeping the running config: %s", exc)
        else:
            self._apply(new)
        self.notifier.ready(self._summary())

    def _apply(self, new: Config) -> None:
        plan = plan_reload(self.config, new, self.pools)
        if plan.refused:
            log.error("%s", plan.refused, extra=fields(queue=plan.refused_queue, reason="reload_refused"))
            return
        for note in plan.notes:
            log.warning("%s", note)
        new = plan.config
        self._prepare_app(dataclasses.replace(new, app=dataclasses.replace(new.app, preload=())))
        for q in plan.add:
            self.pools[q.name] = Pool(q, self.spawner.settings_key(q, new))
            self.metrics.prime(q.name)
            log.info("reload: queue %s added with %d worker(s)", q.name, self.pools[q.name].desired())
        for q in plan.update:
            pool = self.pools[q.name]
            before, range_before = pool.desired(), pool.config.autoscale and (pool.config.autoscale.min,
                                                                              pool.config.autoscale.max)
            if pool.update(q, self.spawner.settings_key(q, new)):
                log.info("reload: queue %s settings changed; replacing its workers as they finish", q.name)
            if q.autoscale and range_before != (q.autoscale.min, q.autoscale.max):
                log.info("reload: queue %s elastic, %d to %d workers (now %d)", q.name, q.autoscale.min,
                         q.autoscale.max, pool.desired())
            elif before != pool.desired():
                log.info("reload: queue %s concurrency %d -> %d", q.name, before, pool.desired())
        for name in plan.remove:
            self.pools[name].removed = True
            log.info("reload: queue %s removed; draining its workers", name)
        self.partitions.sync(self.pools)
        self.config = new
        for part in (self.partitions, self.scaler, self.handlers, self.registry, self.house, self.spawner):
            part.configure(new)
        if self.web:
            self.web.token = new.web.token  # (a token set or changed takes effect at once)
        self._register_queues()
        if plan.lease_changed:  # renewed at once under the new lease (above); guarded as tightly
            self.sentry.set_check(margin(new.lease) / 2)
        log.info("reloaded %s", new.source)

    # -- reconcile: desired minus actual, per pool -----------------------------------

    def _reconcile(self, now: float) -> None:
        # Forks are the loop's slowest work (ms each): a burst of respawns (after a wave of
        # kills) is cut into slices, so the hard limits and samples due meanwhile come first.
        self.spawn_pending = False
        for name, pool in list(self.pools.items()):
            if self.stopping:
                for w in pool.taking_work():
                    w.drain("drain")
            else:
                for w in pool.to_replace(max_concurrent_recycles(pool.config.settings.recycle, pool.desired())):
                    w.drain("reload")
                delta = pool.delta()
                if delta > 0 and pool.may_spawn(now):
                    if pool.backoff:
                        self._spawn(pool, now)  # one probe per backoff step, not a burst
                        pool.respawn_at = now + pool.backoff
                    else:
                        for _ in range(delta):
                            if time.monotonic() - now > SPAWN_SLICE:
                                self.spawn_pending = True  # the rest on the next pass, at once
                                break
                            if not self._spawn(pool, now):
                                break  # out of descriptors or memory: retried in a second
                elif delta < 0:
                    for w in pool.excess(-delta):
                        w.drain("scale_down" if pool.config.autoscale else "drain")
                if pool.delta() <= 0:
                    pool.spawn_error = None
            if pool.removed and not pool.workers:
                del self.pools[name]
                self.house.forget(name)
                self.partitions.sync(self.pools)

    def _spawn_failed(self, pool: Pool, now: float, error: str) -> bool:
        if pool.note_spawn_failure(now, error):
            log.error("queue %s: cannot start a worker (%d of %d running): %s", pool.name,
                      len(pool.current()), pool.desired(), error,
                      extra=fields(queue=pool.name, reason="spawn_failed"))
        return False

    def _spawn(self, pool: Pool, now: float) -> bool:
        """Forks one worker; False (logged once, shown in status, retried) when the host
        refuses: a master that cannot start a worker keeps governing the ones it has."""
        wp = self.spawner.spawn(pool, now)
        if isinstance(wp, str):
            return self._spawn_failed(pool, now, wp)
        self.selector.register(wp.sock, selectors.EVENT_READ, ("channel", wp))
        self.selector.register(wp.pidfd, selectors.EVENT_READ, ("exit", wp))
        return True

    def _owned_fds(self) -> list[int]:
        """Descriptors a forked worker must close: they belong to this loop."""
        fds = [key.fd for key in self.selector.get_map().values()]
        fds += [self._sig_r, self._sig_w, self.notifier.fileno()]
        # The master's Redis connections: a job must not be able to write into them (it would
        # desynchronise the master's replies), so the child closes them before any job code.
        fds += socket_fds(self.redis) + (socket_fds(self.house.probe) if self.house else [])
        fds.append(self.state_lock.fileno())  # master.lock: workers have no business with it
        fds += self.sentry.fds()  # a job must not be able to hand the sentry pidfds, or kill it
        fds.append(self.board.fileno())  # the mapping stays; the descriptor goes
        # listening sockets, even while a server has paused accepting (then not in the map)
        fds += [s.sock.fileno() for s in (self.control, self.http) if s]
        if hasattr(self.selector, "fileno"):
            fds.append(self.selector.fileno())
        return sorted({fd for fd in fds if fd >= 0})

    # -- the sentry -------------------------------------------------------------------

    def _start_sentry(self) -> None:
        self.next_sentry_try = time.monotonic() + SENTRY_RETRY
        why = self.sentry.start(self.board.fileno(), check=margin(self.config.lease) / 2)
        if why:
            log.warning("no sentry (%s): until one starts (retried every %.0fs), a run whose lease "
                        "cannot be renewed is not frozen, and if this master is SIGKILLed its "
                        "workers die with it but their jobs' children may live on", why, SENTRY_RETRY,
                        extra=fields(reason="no_sentry"))
            return
        self.selector.register(self.sentry.fileno(), selectors.EVENT_READ, ("sentry", None))
        self._watch_all()
        log.debug("sentry %d watching this master's workers", self.sentry.pid)

    def _on_sentry_exit(self) -> None:
        """The sentry died under us (killed by hand, by the OOM killer): until another is up, a
        SIGKILLed master would leave its workers stopped and their children running."""
        pid = self.sentry.pid
        self.selector.unregister(self.sentry.fileno())
        how = self.sentry.reap()
        log.error("sentry %d exited (%s); starting another", pid, how, extra=fields(reason="sentry_died"))
        self._start_sentry()

    def _watch_all(self) -> None:
        """A new sentry takes every live worker (they were forked before it)."""
        for pool in self.pools.values():
            for w in pool.workers.values():
                self.sentry.watch(w.pid, w.pidfd, w.slot)

    def _kill_strays(self) -> None:
        """What a dead worker's jobs left running was re-parented to us (a subreaper): a child
        that started a session of its own, a daemon. Killed, whole trees, before the job is
        requeued, so no part of the old run goes on beside the new one."""
        ours = {w.pid for pool in self.pools.values() for w in pool.workers.values()}
        ours.add(self.sentry.pid)
        if self.embedded and self.embedded.proc:
            ours.add(self.embedded.proc.pid)
        for pid in proctree.children(self.pid):
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

    # -- leases: what the renewals say about the jobs the sentry guards ----------------

    def _on_lease_lost(self, wp: WorkerProcess, cut_off: float) -> None:
        """Redis no longer holds this worker's job for it (the lease ran out while the host was
        cut off, and another host took the job): the run, frozen by the sentry or not, must
        not go on. Killed like a timeout; its job's record says what happened."""
        log.error("worker %r lost the lease of job %s after %.1fs without a confirmed renewal "
                  "(another host has it now); killing its run", wp, wp.job.id if wp.job else "?",
                  cut_off, extra=fields(worker=f"{wp.queue}[{wp.index}]", worker_pid=wp.pid,
                                        queue=wp.queue, reason="lease_lost",
                                        job=wp.job.id if wp.job else None))
        self.metrics.lease_lost.labels(wp.queue).inc()
        wp.kill("lease_lost", cut_off=round(cut_off, 3))

    def _on_thaw(self, wp: WorkerProcess, frozen_for: float) -> None:
        """A renewal came through for a run the sentry had frozen: the lease was ours all along
        (renewed with the same token, nobody took the job), so the run goes on."""
        proctree.thaw_tree(wp.pid, wp.pidfd)
        self.board.set_frozen(wp.slot, 0.0)
        self.metrics.lease_frozen.labels(wp.queue).inc()
        log.warning("worker %r resumed after %.1fs frozen: its lease could not be confirmed, and "
                    "was still ours", wp, frozen_for,
                    extra=fields(worker=f"{wp.queue}[{wp.index}]", worker_pid=wp.pid, queue=wp.queue,
                                 reason="lease_frozen"))

    # -- children -------------------------------------------------------------------

    def _on_channel(self, wp: WorkerProcess, exited: bool = False) -> None:
        messages, closed, malformed = channel.receive_all(wp.sock)
        while exited and not closed:  # its last words: every one of them, however many
            more, closed, bad = channel.receive_all(wp.sock)
            messages, malformed = messages + more, malformed + bad
            closed = closed or not (more or bad)
        now = time.monotonic()
        pool = self.pools.get(wp.queue)
        if malformed and not exited:
            self._on_lie(wp, f"{malformed} malformed message(s) on its channel")
            messages = []  # a worker that lies is believed in nothing
        for msg in messages:
            wp.on_message(msg, now)
            if msg[0] == "busy":
                self.reports.ring()
            elif msg[0] == "exit" and not exited:
                wp.hold_to_word()
            elif msg[0] == "recycle" and pool:
                self._answer_recycle(pool, wp, str(msg[1]))
        if closed:
            self.selector.unregister(wp.sock)
            if not exited and _running(wp.pid) and wp.lose_channel():
                log.warning("worker %r closed its channel to the master (its job closed the "
                            "descriptor); it settles that job and exits; replacing it", wp,
                            extra=fields(worker=f"{wp.queue}[{wp.index}]", worker_pid=wp.pid,
                                         queue=wp.queue, reason="channel_lost",
                                         job=wp.job.id if wp.job else None))

    def _on_lie(self, wp: WorkerProcess, why: str) -> None:
        """A worker said something no honest worker says (its job wrote on the channel or the
        scoreboard): nothing it says is believed any more; it is killed at once and replaced,
        and the job it runs is charged as the job that did it (``protocol_violation``)."""
        if wp.state is State.STOPPING:
            return
        log.warning("worker %r broke the worker protocol (%s): killing and replacing it", wp, why,
                    extra=fields(worker=f"{wp.queue}[{wp.index}]", worker_pid=wp.pid, queue=wp.queue,
                                 reason="protocol_violation", job=wp.job.id if wp.job else None))
        wp.kill("protocol_violation", why=why)

    def _on_finished(self, pool: Pool, wp: WorkerProcess, runs: int, partition: int | None) -> None:
        """A look at the reports found runs that ended (workers count them; no message)."""
        now = time.monotonic()
        self.house.touch(wp.queue, now, partition)
        self.finished += runs
        self.last_progress = now
        if pool.backoff:
            log.info("queue %s: a worker finished a job; crash backoff reset", wp.queue)
            pool.backoff, pool.respawn_at, pool.last_error = 0.0, 0.0, None

    def _answer_recycle(self, pool: Pool, wp: WorkerProcess, reason: str) -> None:
        """Grants a retirement unless too many of the pool's workers are already recycling."""
        recycling = sum(1 for w in pool if w.state is State.DRAINING
                        and w.stop_reason in ("max_jobs", "max_age"))
        limit = max_concurrent_recycles(pool.config.settings.recycle, pool.desired())
        granted = recycling < limit or self.stopping is not None
        try:
            wp.sock.send(b"go" if granted else b"later")
        except OSError:
            return
        if granted:
            wp.recycle(reason)
            log.info("worker %r recycling (%s, after %d jobs, %.0fs)", wp, reason, wp.jobs_done,
                     time.monotonic() - wp.started,
                     extra=fields(worker=f"{wp.queue}[{wp.index}]", worker_pid=wp.pid, queue=wp.queue,
                                  reason=reason))

    def _on_exit(self, wp: WorkerProcess) -> None:
        try:
            pid, status = os.waitpid(wp.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = wp.pid, 0
        if pid == 0:
            return
        if wp.sock.fileno() in self.selector.get_map():
            self._on_channel(wp, exited=True)  # what it said before dying still sits in the socket
        if wp.sock.fileno() in self.selector.get_map():  # _on_channel unregisters it on EOF
            self.selector.unregister(wp.sock)
        self.selector.unregister(wp.pidfd)
        wp.close()
        pool = self.pools.get(wp.queue)
        if pool:  # its last words: the runs it finished, and the job it died running (exactly)
            self.reports.observe(pool, wp)
        self.reports.forget(wp)
        self.board.release(wp.slot)
        self.strays_due = True  # killed once the batch of exits is read, before any requeue
        pool = self.pools.get(wp.queue)
        if pool:
            pool.workers.pop(wp.pid, None)
        now = time.monotonic()
        ex = classify_exit(wp, status, self.stopping)
        if pool:
            pool.exits[ex.reason] += 1
        self.metrics.exits.labels(wp.queue, ex.reason).inc()
        self.house.touch(wp.queue, now)
        self.last_progress = now
        ran = wp.run_time(now)
        if ran is not None:  # the run ended with its worker: count it under the kill's reason
            self.finished += 1
            self.metrics.jobs.labels(wp.queue, ex.reason).inc()
            self.metrics.duration.observe(wp.queue, ran)
        (log.warning if ex.loud else log.info)(
            "worker %r exited (%s), reason %s%s", wp, ex.description, ex.reason,
            "".join(f", {k} {v}" for k, v in wp.stop_detail.items()) if ex.killed else "",
            extra=fields(worker=f"{wp.queue}[{wp.index}]", worker_pid=wp.pid, queue=wp.queue,
                         reason=ex.reason, job=wp.job.id if wp.job else None))
        self.house.lose(lost_job(wp, ex, pool.config if pool else None, ran))
        if ex.back_off and pool:
            error = wp.fatal or ex.description
            backoff = pool.note_crash(now, error, wp.started)
            if backoff is not None:
                log.error("queue %s: worker died before finishing a job (%s); respawning in %.0fs",
                          wp.queue, error, backoff, extra=fields(queue=wp.queue, reason="crashed"))

    # -- timers --------------------------------------------------------------------

    def _timers(self, now: float) -> None:
        if self.stopping is Stopping.GRACEFUL and now >= self.stop_deadline:
            self._kill_all(warn="still busy at shutdown_timeout; killing it")
        if now >= self.reports.next_scan:
            self.reports.scan(self.pools, now)  # before the limits: what runs, since when
        enforce_hard_deadlines(self.pools.values(), now)
        if not self.sentry.alive and self.sentry.fileno() < 0 and now >= self.next_sentry_try \
                and not self.stopping:
            self._start_sentry()
        for server in (self.control, self.http):
            if server:
                server.expire(now)  # clients that did not finish in time: closed, never waited for
        if self.web:
            self.web.step()  # the page's view: one bounded round trip per pass, between the kills
        for pool in self.pools.values():
            sample_memory(pool, now)
            enforce_leaving(pool, now, self.config.shutdown_timeout + LEAVE_MARGIN, self.house.redis_ok)
        if self.embedded and not self.embedded.alive() and not self.stopping:
            log.error("embedded redis-server died; restarting it")
            try:
                self.embedded.start()
            except RuntimeError as exc:
                log.error("%s", exc)
        if self.house.redis_ok and not self.stopping:
            try:
                serving = {name for name, p in self.pools.items()
                           if any(w.state in (State.IDLE, State.BUSY) for w in p)}
                gained, touched = self.partitions.run(now, serving)
                for queue, parts in gained.items():
                    self.house.look_now(queue, parts, fresh=True)
                for queue, parts in touched.items():
                    self.house.look_now(queue, parts)
            except (redis.RedisError, *GARBLED) as exc:
                self.house.failed(exc)
        lanes = {name: self.partitions.lanes(name) if p.config.partitions else all_lanes(p.config)
                 for name, p in self.pools.items()}
        self.house.run(now, self.pools, lanes)
        if self.house.redis_ok and now >= self.registry.next_beat:
            try:
                self.registry.run(now)
            except (redis.RedisError, *GARBLED) as exc:
                self.house.failed(exc)
        if self.house.redis_ok and not self.stopping and now >= self.handlers.next_run:
            try:
                self.handlers.run(now, self.pools, lanes, lambda q: tuple(
                    self.house.stats(q, now).get(k) for k in ("done", "dead", "active")))
            except (redis.RedisError, *GARBLED) as exc:
                self.house.failed(exc)
        # on the figures just read; what it changes (a pool's desired size) _reconcile carries out
        self.scaler.run(now, self.pools, self.house.stats, stopping=bool(self.stopping))

    def _hint_idle(self, queue: str, partition: int, waiting: int) -> None:
        """A partition we hold has jobs waiting: send idle workers to it. (Hints from producers
        reach them at once; this catches what no hint announced: a worker that left a backlog
        to recycle, a retry falling due, a partition just acquired.)"""
        pool = self.pools.get(queue)
        idle = sum(1 for w in pool if w.state is State.IDLE) if pool else 0
        if idle:
            run(self.redis, self.house.keys(queue).hint({partition: min(waiting, idle)}))

    # -- systemd, metrics, health --------------------------------------------------------

    def _notify_systemd(self, now: float) -> None:
        if self.watchdog_interval and self._ready_sent and now >= self.next_watchdog:
            # sent from the loop itself, so it stops when the loop does: systemd then restarts us
            self.notifier.notify("WATCHDOG=1", f"STATUS={self._summary()}")
            self.next_watchdog = now + self.watchdog_interval
        if self.stopping is Stopping.GRACEFUL and self.notifier.enabled and now >= self.next_extend:
            # keep systemd's stop timeout from cutting a drain that is still making progress
            if now - self.last_progress < 10.0 or self.next_extend == 0.0:
                remaining = max(self.stop_deadline - now, 0.0) + 10.0
                self.notifier.notify(f"EXTEND_TIMEOUT_USEC={int(remaining * 1e6)}", f"STATUS={self._summary()}")
            self.next_extend = now + 5.0

    def _metrics_state(self) -> dict[str, Any]:
        now = time.monotonic()
        return {"queues": {name: self.house.stats(name, now) for name in self.pools},
                "global_concurrency": {p.name: p.config.global_concurrency for p in self.pools.values()
                                       if p.config.global_concurrency},
                "pools": self._pool_snapshots(now),
                "handlers": self.handlers.snapshot(),
                "partitions": self.partitions.snapshot(),
                "fleet": {"masters": self.registry.masters, "last_beat": self.registry.last_beat},
                "redis_ok": self.house.redis_ok}

    def _register_queues(self) -> None:
        """Our queues join the prefix's list of queues (as a Python producer's first enqueue
        does), so status, the page and the job commands know them whoever produces to them."""
        try:
            self.redis.sadd(f"{self.config.redis.prefix}:queues", *self.pools)
        except (redis.RedisError, *GARBLED) as exc:
            self.house.failed(exc)

    def _fleet_record(self) -> dict[str, Any]:
        """What the fleet sees of this master: ``status``, plus when it started (wall clock)."""
        st = self.status()
        st["master"].update(version=__version__, started=round(time.time() - st["master"]["uptime"], 3))
        return st

    def _pool_snapshots(self, now: float) -> list[dict[str, Any]]:
        return [{**p.snapshot(now), "autoscale": self.scaler.snapshot(p)} for p in self.pools.values()]

    def _on_scale(self, queue: str, direction: str, reason: str) -> None:
        self.metrics.scale_decisions.labels(queue, direction, reason).inc()

    def _serve_metrics(self) -> tuple[int, str, bytes]:
        self.reports.scan(self.pools, time.monotonic())  # counters as of now
        return 200, CONTENT_TYPE, self.metrics.render()

    def _serve_health(self) -> tuple[int, str, bytes]:
        """503 when Redis has been unreachable for longer than health.redis_grace, or when
        the loop woke up more than health.max_loop_lag late. (A stuck loop does not answer.)"""
        problems = []
        if time.monotonic() - self.house.last_ok > 2.0:
            self.house.check()  # an idle master talks to Redis only every few seconds
        if self.house.down_since is not None:
            down = time.monotonic() - self.house.down_since
            if down > self.config.health.redis_grace:
                problems.append(f"redis unreachable for {down:.0f}s")
        late_at, lag = self.late
        if time.monotonic() - late_at < LATE_MEMORY:
            problems.append(f"master loop was {lag:.1f}s late {time.monotonic() - late_at:.0f}s ago")
        if self.stopping:
            problems.append(f"stopping ({self.stopping.value})")
        body = ("; ".join(problems) or "ok") + "\n"
        return (503 if problems else 200), "text/plain; charset=utf-8", body.encode()

    # -- status ----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        self.reports.scan(self.pools, now)  # each worker's job as of now
        return {
            "master": {"pid": self.pid, "host": socket.gethostname(), "uptime": round(now - self.started, 3),
                       "config": self.config.source, "stopping": self.stopping and self.stopping.value,
                       "redis": mask_url(self.config.redis.url),
                       "redis_ok": self.house.redis_ok},
            "pools": self._pool_snapshots(now),
            "partitions": self.partitions.snapshot(),
            "handlers": self.handlers.snapshot(),
        }
