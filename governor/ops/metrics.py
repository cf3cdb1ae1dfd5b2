"""Prometheus metrics, kept in the master: workers count their runs in their scoreboard slot,
the master adds up what grew.

No per-process metric files (prometheus-client's multiprocess mode): the master
reads every worker's counters (runs by outcome, run-time and wait histograms)
on its own clock, sees every exit and every sample, so one registry in one
process is the whole truth. Gauges (queue depth, workers by state, memory) are
read from the master's state at scrape time by ``_StateCollector``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class SummedHistogram(Collector):
    """A histogram per queue fed with bucket counts added up elsewhere (the workers' reports),
    as well as with single observations (runs the master ended itself, by a kill)."""

    def __init__(self, name: str, doc: str, buckets: tuple[float, ...] = DURATION_BUCKETS) -> None:
        self.name, self.doc, self.buckets = name, doc, buckets
        self._series: dict[str, list[float]] = {}  # queue -> per-bucket counts (last: +Inf), then sum

    def labels(self, queue: str) -> list[float]:
        return self._series.setdefault(queue, [0.0] * (len(self.buckets) + 2))

    def add(self, queue: str, counts: list[int], seconds: float) -> None:
        series = self.labels(queue)
        for i, n in enumerate(counts):
            series[i] += n
        series[-1] += seconds

    def observe(self, queue: str, seconds: float) -> None:
        counts = [0] * (len(self.buckets) + 1)
        counts[next((i for i, b in enumerate(self.buckets) if seconds <= b), len(self.buckets))] = 1
        self.add(queue, counts, seconds)

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.doc, labels=["queue"])
        for queue, series in self._series.items():
            cumulative, running = [], 0.0
            for bound, n in zip((*(repr(float(b)) for b in self.buckets), "+Inf"), series[:-1], strict=True):
                running += n
                cumulative.append((bound, running))
            family.add_metric([queue], cumulative, sum_value=series[-1])
        yield family


class _StateCollector(Collector):
    """Gauges computed from a snapshot function at scrape time."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.snapshot = snapshot

    def describe(self) -> list:
        return []  # so registering does not call the snapshot before the master is ready

    def collect(self) -> Iterator[GaugeMetricFamily]:
        st = self.snapshot()
        depth = GaugeMetricFamily("governor_queue_jobs", "Jobs in each state, per queue (as of the "
                                  "master's last pass over the queue)", labels=["queue", "state"])
        oldest = GaugeMetricFamily("governor_queue_oldest_waiting_age_seconds",
                                   "Age of the oldest waiting job, per queue (0 when none waits)",
                                   labels=["queue"])
        throttled = CounterMetricFamily("governor_queue_throttled_reserves",
                                        "Reserves a rate limit made wait, fleet-wide, per queue",
                                        labels=["queue"])
        paused = GaugeMetricFamily("governor_queue_paused", "1 while the queue is paused (fleet-wide)",
                                   labels=["queue"])
        for queue, counts in st["queues"].items():
            for state in ("waiting", "delayed", "active", "dead", "done"):
                depth.add_metric([queue, state], counts.get(state, 0))
            oldest.add_metric([queue], counts.get("oldest_age") or 0.0)
            throttled.add_metric([queue], counts.get("throttled", 0))
            paused.add_metric([queue], 1.0 if counts.get("paused") else 0.0)
        limit = GaugeMetricFamily("governor_queue_global_concurrency",
                                  "global_concurrency of the queue (compare with governor_queue_jobs{state=active})",
                                  labels=["queue"])
        for queue, n in st.get("global_concurrency", {}).items():
            limit.add_metric([queue], n)
        workers = GaugeMetricFamily("governor_workers", "Worker processes, per queue and state",
                                    labels=["queue", "state"])
        desired = GaugeMetricFamily("governor_pool_desired_workers", "Workers the pool should have, per "
                                    "queue: its concurrency, or an elastic pool's current target",
                                    labels=["queue"])
        actual = GaugeMetricFamily("governor_pool_actual_workers", "Workers taking work (starting, idle or "
                                   "busy), per queue", labels=["queue"])
        low = GaugeMetricFamily("governor_pool_min_workers", "The fewest workers the pool may have (a "
                                "fixed pool: its concurrency)", labels=["queue"])
        high = GaugeMetricFamily("governor_pool_max_workers", "The most workers the pool may have (a "
                                 "fixed pool: its concurrency)", labels=["queue"])
        backoff = GaugeMetricFamily("governor_pool_backoff_seconds",
                                    "Crash-loop backoff in force, per queue (0: none)", labels=["queue"])
        rss = GaugeMetricFamily("governor_worker_memory_bytes",
                                "Resident memory of each worker and its descendants", labels=["queue", "index"])
        slots = GaugeMetricFamily("governor_pool_slots", "Jobs the pool's workers taking work can run at "
                                  "once (workers times jobs_per_worker), per queue", labels=["queue"])
        flying = GaugeMetricFamily("governor_worker_jobs_in_flight", "Jobs the pool's workers hold now "
                                   "(running, or a suspect waiting to run alone), per queue", labels=["queue"])
        blocked = GaugeMetricFamily("governor_worker_event_loop_blocked_seconds", "How long a worker's "
                                    "event loop has not turned (sync code in an async def job), per worker "
                                    "with one blocked", labels=["queue", "index"])
        for pool in st["pools"]:
            q = pool["queue"]
            for w in pool["workers"]:
                if w.get("loop_blocked"):
                    blocked.add_metric([q, str(w["index"])], w["loop_blocked"]["seconds"])
            taking = [w for w in pool["workers"] if w["state"] in ("starting", "idle", "busy")]
            slots.add_metric([q], sum(w.get("slots", 1) for w in taking))
            flying.add_metric([q], sum(len(w["jobs"]) if "jobs" in w else int(w.get("job") is not None)
                                       for w in pool["workers"]))
            desired.add_metric([q], pool["desired"])
            actual.add_metric([q], pool["actual"])
            scale = pool.get("autoscale") or {"min": pool["desired"], "max": pool["desired"]}
            low.add_metric([q], scale["min"])
            high.add_metric([q], scale["max"])
            backoff.add_metric([q], (pool["backoff"] or {}).get("seconds", 0.0))
            by_state = dict.fromkeys(("starting", "idle", "busy", "draining", "stopping"), 0)
            for w in pool["workers"]:
                by_state[w["state"]] += 1
                if w.get("rss"):
                    rss.add_metric([q, str(w["index"])], w["rss"])
            for state, n in by_state.items():
                workers.add_metric([q, state], n)
        times = GaugeMetricFamily("governor_handler_run_seconds", "Run time of each handler's last successful "
                                  "runs (up to 1000 per queue lane), fleet-wide", labels=["queue", "handler", "quantile"])
        runs = CounterMetricFamily("governor_handler_runs", "Runs of each handler by how they ended (done, "
                                   "failed, dead, and each failure's reason), fleet-wide: every master reports "
                                   "the same totals, so aggregate with max, not sum",
                                   labels=["queue", "handler", "outcome"])
        learnt = GaugeMetricFamily("governor_handler_timeout_seconds", "The hard limit a handler's jobs run "
                                   "under: learnt (timeout.adaptive), or the configured one",
                                   labels=["queue", "handler", "adaptive"])
        fallback = GaugeMetricFamily("governor_handler_adaptive_fallback", "1 while a handler is back on its "
                                     "configured limit after too many adaptive kills", labels=["queue", "handler"])
        for queue, handlers in st.get("handlers", {}).items():
            for handler, t in handlers.items():
                if t["samples"]:
                    for q, key in (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99")):
                        times.add_metric([queue, handler, q], t[key])
                for outcome in ("done", "failed", "dead"):
                    runs.add_metric([queue, handler, outcome], t[outcome])
                for reason, n in t["reasons"].items():
                    runs.add_metric([queue, handler, f"failed_{reason}"], n)
                hard = t["limit"] or t["configured"]
                if hard:
                    learnt.add_metric([queue, handler, "true" if t["limit"] else "false"], hard)
                if t["adaptive"]:
                    fallback.add_metric([queue, handler], 1.0 if t["fallback"] else 0.0)
        unheld = GaugeMetricFamily("governor_partitions_unheld", "Partitions of a partitioned queue that no "
                                   "master holds (their jobs wait until one does)", labels=["queue"])
        for queue, part in st.get("partitions", {}).items():
            unheld.add_metric([queue], len(part.get("unheld", [])))
        masters = GaugeMetricFamily("governor_fleet_masters", "Masters with a live heartbeat in Redis, as of "
                                    "this master's last heartbeat")
        masters.add_metric([], st.get("fleet", {}).get("masters", 0))
        beat = GaugeMetricFamily("governor_master_heartbeat_timestamp_seconds", "Unix time of this master's "
                                 "last heartbeat Redis took (alert when it stops advancing)")
        beat.add_metric([], st.get("fleet", {}).get("last_beat") or 0.0)
        up = GaugeMetricFamily("governor_redis_up", "1 when the master's last Redis call succeeded")
        up.add_metric([], 1.0 if st["redis_ok"] else 0.0)
        yield from (depth, oldest, throttled, paused, limit, workers, desired, actual, low, high, backoff, rss,
                    slots, flying, blocked,
                    times, runs, learnt, fallback, unheld, masters, beat, up)


class Metrics:
    """The master's registry. Event methods are cheap: they run once per job start and end."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.jobs = Counter("governor_jobs", "Jobs that finished a run, by queue and outcome "
                            "(ok, exception, timeout_soft, memory_hard, timeout_hard, crashed, ...)",
                            ["queue", "outcome"], registry=r)
        self.duration = SummedHistogram("governor_job_duration_seconds", "How long a job's run took")
        self.wait = SummedHistogram("governor_queue_wait_seconds", "From enqueue (or due time) to start of a run")
        r.register(self.duration)
        r.register(self.wait)
        self.exits = Counter("governor_worker_exits", "Worker exits by queue and reason (kills, recycles, "
                             "drains, crashes)", ["queue", "reason"], registry=r)
        self.redis_errors = Counter("governor_redis_errors", "Redis calls by the master that failed",
                                    registry=r)
        self.lease_lost = Counter("governor_lease_lost", "Runs killed because their lease was lost "
                                  "(the host was cut off longer than the lease; another host took the job)",
                                  ["queue"], registry=r)
        self.lease_frozen = Counter("governor_lease_frozen", "Runs frozen at their lease deadline "
                                    "(no renewal confirmed in time) that went on once it was",
                                    ["queue"], registry=r)
        self.scale_decisions = Counter("governor_scale_decisions", "Elastic pools' scaling decisions, by "
                                       "queue, direction (up, down, held: a host guard refused a step "
                                       "up) and reason (oldest_wait, depth, idle, memory, cpu)",
                                       ["queue", "direction", "reason"], registry=r)
        self.loop_lag = Gauge("governor_master_loop_lag_seconds",
                              "How late the master's loop woke up, last pass", registry=r)
        r.register(_StateCollector(snapshot))

    def prime(self, queue: str) -> None:
        """Creates a queue's series at zero, so alert rules see them before the first event."""
        self.jobs.labels(queue, "ok")
        self.duration.labels(queue)
        self.wait.labels(queue)
        self.lease_lost.labels(queue)
        self.lease_frozen.labels(queue)

    def render(self) -> bytes:
        return generate_latest(self.registry)
