"""The arbiter: one single-threaded loop over a selector that keeps every pool at its size.

Events arrive as file descriptors: signals through the wakeup fd, worker
messages through their socketpairs, worker deaths through pidfds (so only
processes this master forked are ever reaped), ``governor status`` through
the control socket. After each batch of events the loop runs its duties
(``duties.py``) and reconciles every pool (desired minus actual). Signal
handlers do nothing at all: the signal number arrives on the wakeup fd and
``handle_<name>`` runs from the loop, where logging and Redis calls are safe.

Runs in: master.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import selectors
import time

import redis

from governor.config import Config, ConfigError, load_config, mask_url
from governor.identity import worker_id
from governor.log import fields
from governor.ops.health import Health
from governor.ops.metrics import DURATION_BUCKETS, Metrics
from governor.ops.systemd import Notifier
from governor.protocol.connection import resolve_url, socket_fds
from governor.supervise import duties, fdbudget, statedir
from governor.supervise.autoscale import Autoscaler
from governor.supervise.children import Children
from governor.supervise.embedded import EmbeddedRedis
from governor.supervise.endpoints import Endpoints
from governor.supervise.enforce import enforce_hard_deadlines
from governor.supervise.exits import Stopping
from governor.supervise.fleetrecord import FleetRegistry
from governor.supervise.handlerstats import HandlerStats
from governor.supervise.housekeeping import Housekeeper
from governor.supervise.partitions import PartitionLeases
from governor.supervise.pool import Pool
from governor.supervise.reconcile import reconcile
from governor.supervise.redishealth import RedisHealth
from governor.supervise.reload import apply_to_pools, plan_reload
from governor.supervise.scoreboard import Scoreboard
from governor.supervise.sentry import Sentry
from governor.supervise.signalpipe import SignalPipe
from governor.supervise.snapshots import Snapshots
from governor.supervise.spawner import Spawner, prepare_app
from governor.supervise.trees import TreeGuard, take_the_host

log = logging.getLogger("governor.master")


MASTER_BOOST = 10  # nice levels the master raises itself above its workers, where it may


class Master:
    """One host's arbiter: starts, runs the loop until stopped, cleans up (``run``). Its
    collaborators do the rest: the Spawner forks, Children answers the workers, the duties
    run on its clock, TreeGuard minds the sentry and strays, Health speaks to systemd."""

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
        self.endpoints = Endpoints()  # the control socket, /metrics, /healthz and the page
        self.signals = SignalPipe()  # signals as bytes on a wakeup fd, handled by the loop
        self.notifier = Notifier()
        self.health = Health(config, self.notifier)  # /healthz, STATUS, watchdog, drain progress
        self.metrics = Metrics(lambda: self.snapshots.metrics_state())
        self.housekeeper: Housekeeper | None = None
        self.redis_health: RedisHealth | None = None  # up or down: one outage for every duty
        self.partitions: PartitionLeases | None = None
        self.registry: FleetRegistry | None = None
        self.state_lock = statedir.MasterLock(config.state_dir)
        self.sentry = Sentry()  # kills every worker's tree if this master dies
        # per worker: lease deadlines (guarded by the sentry) and its report (read on our clock)
        self.board = Scoreboard(buckets=DURATION_BUCKETS)
        self.scaler = Autoscaler(config.host, on_decision=lambda queue, direction, reason:
                                 self.metrics.scale_decisions.labels(queue, direction, reason).inc())
        self.nice: int | None = None  # the priority we were started with: the workers' (ours is raised)
        self.spawn_pending = False  # a burst of spawns was cut short: the loop comes back at once
        self.children = Children(selector=self.selector, pools=self.pools, board=self.board, metrics=self.metrics,
                                 health=self.health, stopping=lambda: self.stopping)
        self.reports = self.children.reports
        self.trees = TreeGuard(sentry=self.sentry, board=self.board, selector=self.selector, pools=self.pools,
                               lease=config.lease, master_pid=self.pid, embedded=self.embedded,
                               stopping=lambda: self.stopping)

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
        self.nice = take_the_host(MASTER_BOOST)  # before the sentry is forked (it runs at our priority)
        self.trees.start()  # also as pid 1: besides the trees of a dead master, it guards leases
        prepare_app(self.config)
        if self.embedded:
            self.embedded.start()
        self.redis_health = RedisHealth.connect(self.redis_url, self.config.redis.tls,
                                                on_error=self.metrics.redis_errors.inc)
        self.redis = self.redis_health.redis
        self.housekeeper = Housekeeper(self.redis, self.config.redis.prefix, self.config.lease, self.board,
                                 on_lease_lost=self.children.on_lease_lost, on_thaw=self.children.on_thaw,
                                 health=self.redis_health)
        self.housekeeper.on_ready = self.children.hint_idle
        self.children.housekeeper = self.housekeeper
        self.health.redis = self.redis_health
        self.handlers = HandlerStats(self.redis, self.housekeeper.keys)
        self.registry = FleetRegistry(self.redis, self.config.redis.prefix, worker_id(self.pid), self.config.lease,
                                      lambda: self.snapshots.fleet_record())
        self.partitions = PartitionLeases(self.redis, self.config.redis.prefix, worker_id(self.pid),
                                          self.config.lease)
        self.spawner = Spawner(config=self.config, redis_url=self.redis_url, master_pid=self.pid, nice=self.nice,
                               board=self.board, sentry=self.sentry, keys=self.housekeeper.keys,
                               master=self.partitions.master, held=self.partitions.table,
                               owned_fds=self._owned_fds)
        self.snapshots = Snapshots(pid=self.pid, started=self.started, config=lambda: self.config,
                                   stopping=lambda: self.stopping, pools=self.pools, reports=self.reports,
                                   housekeeper=self.housekeeper, redis_health=self.redis_health, handlers=self.handlers,
                                   partitions=self.partitions, registry=self.registry, scaler=self.scaler,
                                   health=self.health, metrics=self.metrics)
        self.signals.install(self.selector)
        self.endpoints.start(self.selector, config=lambda: self.config, redis=self.redis,
                             snapshots=self.snapshots, health=self.health, redis_ok=lambda: self.redis_health.ok,
                             pools=self.pools, stats=self.housekeeper.stats, master_id=worker_id(self.pid),
                             stopping=lambda: self.stopping)
        for q in self.config.queues.values():
            self.pools[q.name] = Pool(q, self.spawner.settings_key(q, self.config))
            self.metrics.prime(q.name)
        self.partitions.sync(self.pools)
        self.housekeeper.load_library()
        self.housekeeper.recover_predecessor(self.pools)
        self.housekeeper.register_queues(self.pools)
        self.duties = duties.build(reports=self.reports, pools=self.pools, trees=self.trees,
                                   endpoints=self.endpoints, shutdown_timeout=self.config.shutdown_timeout,
                                   housekeeper=self.housekeeper, health=self.redis_health, partitions=self.partitions,
                                   registry=self.registry, handlers=self.handlers, scaler=self.scaler,
                                   stopping=lambda: self.stopping)
        log.info("governor master %d starting: redis %s, queues %s", self.pid,
                 mask_url(self.config.redis.url),
                 ", ".join(f"{q.name}={q.autoscale.min}-{q.autoscale.max}" if q.autoscale
                           else f"{q.name}={q.concurrency}" for q in self.config.queues.values()))

    def _cleanup(self) -> None:
        self.signals.close()
        self.endpoints.close()
        self.children.kill_all()
        if self.partitions:
            self.partitions.release_all("master stopped")
        if self.registry and self.redis_health and self.redis_health.ok:
            try:
                self.registry.leave()
            except duties.REDIS_FAILURES:
                pass  # our record expires with the lease instead
        self.trees.close()
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
            if not self.health.ready_sent and not self.stopping and all(p.up() for p in self.pools.values()):
                self.health.ready(now, self.snapshots.summary())
                log.info("all pools up: %s", self.snapshots.summary())
            if self.stopping and not any(p.workers for p in self.pools.values()):
                self.housekeeper.settle_lost()
                return
            self.health.notify(now, self.stop_deadline if self.stopping is Stopping.GRACEFUL else None,
                               self.snapshots.summary)
            # A pass that took long (a slow Redis call or client) delays every deadline after it
            self.health.note_lateness(time.monotonic() - woke)
            planned = self._next_wakeup(now)
            events = self.selector.select(max(0.0, planned - time.monotonic()))
            woke = time.monotonic()
            # ...and so does waking after the planned time (a stopped process, a starved CPU)
            lag = max(0.0, woke - planned)
            self.metrics.loop_lag.set(lag)
            self.health.note_lateness(lag)
            for key, mask in events:
                if self.selector.get_map().get(key.fd) is not key:
                    continue  # closed earlier in this batch (a worker reaped before its channel's event)
                kind, wp = key.data
                if kind == "channel":
                    self.children.on_channel(wp)
                elif kind == "exit":
                    self.children.on_exit(wp)
                    # a wave of kills is reaped one by one: deadlines that fall meanwhile are
                    # not left until the whole wave is read
                    enforce_hard_deadlines(self.pools.values(), time.monotonic())
                elif kind == "signal":
                    self._on_signals()
                elif kind == "sentry":
                    self.trees.on_exit()
                elif kind == "serve":  # the control socket, the metrics port, their connections
                    wp.on_event(key.fileobj, mask)
            if self.children.strays_due:  # once per batch of exits; their jobs are requeued on the next pass
                self.children.strays_due = False
                self.trees.kill_strays()

    def _next_wakeup(self, now: float) -> float:
        times = [self.duties.next_wakeup(now)]
        if self.spawn_pending:
            times.append(now)
        if self.stopping is Stopping.GRACEFUL and self.stop_deadline > now:
            times.append(self.stop_deadline)
        times.append(self.health.next_wakeup(draining=self.stopping is Stopping.GRACEFUL))
        for pool in self.pools.values():
            if pool.delta() > 0 and pool.respawn_at > now:
                times.append(pool.respawn_at)
        return min(times)

    # -- signals -----------------------------------------------------------------

    def _on_signals(self) -> None:
        for name in self.signals.read():
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
        self.children.kill_all()

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
        self.notifier.ready(self.snapshots.summary())

    def _apply(self, new: Config) -> None:
        plan = plan_reload(self.config, new, self.pools)
        if plan.refused:
            log.error("%s", plan.refused, extra=fields(queue=plan.refused_queue, reason="reload_refused"))
            return
        for note in plan.notes:
            log.warning("%s", note)
        new = plan.config
        prepare_app(dataclasses.replace(new, app=dataclasses.replace(new.app, preload=())))
        apply_to_pools(plan, self.pools, lambda q: self.spawner.settings_key(q, new), self.metrics.prime)
        self.partitions.sync(self.pools)
        self.config = new
        for part in (self.spawner, self.duties, self.trees, self.health):
            part.configure(new)  # (each takes what it holds of the new settings)
        self.housekeeper.register_queues(self.pools)
        log.info("reloaded %s", new.source)

    # -- reconcile: desired minus actual, per pool -----------------------------------

    def _reconcile(self, now: float) -> None:
        self.spawn_pending = reconcile(self.pools, now, stopping=bool(self.stopping), spawn=self._spawn,
                                       removed=self._removed)

    def _removed(self, name: str) -> None:
        self.housekeeper.forget(name)
        self.partitions.sync(self.pools)

    def _spawn(self, pool: Pool, now: float) -> bool:
        """Forks one worker and watches its channel and its death; False if the host refused."""
        wp = self.spawner.spawn(pool, now)
        if wp is None:
            return False
        self.selector.register(wp.sock, selectors.EVENT_READ, ("channel", wp))
        self.selector.register(wp.pidfd, selectors.EVENT_READ, ("exit", wp))
        return True

    def _owned_fds(self) -> list[int]:
        """Descriptors a forked worker must close: they belong to this loop."""
        fds = [key.fd for key in self.selector.get_map().values()]
        fds += [*self.signals.fds(), self.notifier.fileno()]
        # The master's Redis connections: a job must not be able to write into them (it would
        # desynchronise the master's replies), so the child closes them before any job code.
        fds += socket_fds(self.redis) + (socket_fds(self.redis_health.probe) if self.redis_health else [])
        fds.append(self.state_lock.fileno())  # master.lock: workers have no business with it
        fds += self.sentry.fds()  # a job must not be able to hand the sentry pidfds, or kill it
        fds.append(self.board.fileno())  # the mapping stays; the descriptor goes
        fds += self.endpoints.fds()
        if hasattr(self.selector, "fileno"):
            fds.append(self.selector.fileno())
        return sorted({fd for fd in fds if fd >= 0})

    # -- timers --------------------------------------------------------------------

    def _timers(self, now: float) -> None:
        if self.stopping is Stopping.GRACEFUL and now >= self.stop_deadline:
            self.children.kill_all(warn="still busy at shutdown_timeout; killing it")
        self.duties.run(now)
