"""One queue's keys in Redis (``QueueKeys``) and the script calls built from them.

A queue's keys all sit under one hash tag (one Cluster slot), a partition's under a tag of its
own; each method that builds a ``Call`` names every key its script touches, in the order the
script reads them (scripts.py runs the calls).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from governor.protocol.limits import Rules
from governor.protocol.scripts import Call

JOB_STATES = ("waiting", "delayed", "active", "dead", "done")
ACK_WAKE = 7  # in an ack's arguments: whether it wakes a waiting worker (ack.lua's ARGV[8])
NO_RULES = Rules()


@dataclass(frozen=True)
class QueueKeys:
    """Every key of one queue, all under the hash tag ``{prefix:queue}`` (one Cluster slot);
    or of one partition of a partitioned queue, under ``{prefix:queue:N}`` (a slot of its own,
    so a partitioned queue spreads over a Cluster's shards)."""

    prefix: str
    queue: str
    partition: int | None = None

    def key(self, part: str) -> str:
        if self.partition is None:
            return f"{{{self.prefix}:{self.queue}}}:{part}"
        return f"{{{self.prefix}:{self.queue}:{self.partition}}}:{part}"

    def home(self) -> QueueKeys:
        """The queue's own slot: its partition leases, hint lists and the partitions marker."""
        return QueueKeys(self.prefix, self.queue)

    def part(self, n: int) -> QueueKeys:
        return QueueKeys(self.prefix, self.queue, n)

    @property
    def partitions_key(self) -> str:
        """Holds the queue's partition count while it is partitioned (set by its masters)."""
        return self.home().key("partitions")

    @property
    def heads(self) -> str:
        """Hash: ordering key -> the one job of that key that may be waiting, delayed or active."""
        return self.key("heads")

    @property
    def key_lists(self) -> str:
        """Prefix of each ordering key's list of queued jobs (enqueue order)."""
        return self.key("key:")

    @property
    def queued(self) -> str:
        """Sorted set (enqueue sequence -> id) of the jobs queued behind their key's head: an
        index of the keys' lists, for the job commands to list and purge what ``status`` counts
        as waiting. It is the lists' prefix itself, which names no list (a key is never empty)."""
        return self.key_lists

    @property
    def waiting(self) -> str:
        return self.key("waiting")

    @property
    def delayed(self) -> str:
        return self.key("delayed")

    @property
    def active(self) -> str:
        return self.key("active")

    @property
    def dead(self) -> str:
        return self.key("dead")

    @property
    def done(self) -> str:
        return self.key("done")

    @property
    def meta(self) -> str:
        return self.key("meta")

    @property
    def data(self) -> str:
        return self.key("data")

    @property
    def leases(self) -> str:
        return self.key("leases")

    @property
    def wake(self) -> str:
        return self.key("wake")

    @property
    def stats(self) -> str:
        return self.key("stats")

    @property
    def unique(self) -> str:
        """Hash: unique key -> the id of the job holding it while waiting, delayed or active."""
        return self.key("unique")

    @property
    def tickets(self) -> str:
        """Hash: worker -> the time of the start a rate limit set aside for it (reserve.lua)."""
        return self.key("tickets")

    @property
    def paused(self) -> str:
        """``"1"`` while the queue is paused: the reserve starts no job of it, on any host."""
        return self.key("paused")

    # -- script calls ---------------------------------------------------------

    def enqueue(self, jobs: Sequence[tuple[str, str, str, int]]) -> Call:
        args: list[Any] = [len(jobs)]
        for job in jobs:
            args.extend(job)
        return Call("enqueue", (self.meta, self.data, self.waiting, self.delayed,
                                self.key("seq"), self.wake, self.stats, self.unique, self.heads,
                                self.key_lists, self.key("partitions")), args)

    def reserve(self, worker: str, token: str, lease_ms: int, rules: Rules = NO_RULES,
                partitions: int = 0, cluster: bool = False) -> Call:
        """``rules``: the queue's fleet-wide concurrency and rate limits (limits.py).

        A partition's fencing token (lua/lib/leases.lua ``next_fence``): on one Redis, the queue's own
        counter, passed beside the partition's keys (another slot, which only a Cluster
        refuses), so tokens grow in reservation order across the queue; on a Cluster
        (``cluster``), from the partition's counter and Redis time, which needs the queue's
        ``partitions`` count."""
        keys: tuple[str, ...] = (self.waiting, self.delayed, self.active, self.meta, self.data,
                                 self.leases, self.wake, self.key("fence"), self.key("paused"),
                                 self.tickets, self.stats, *rules.keys())
        if self.partition is None:
            fence: tuple[int, int] = (-1, 0)
        else:
            if cluster and not 1 <= partitions <= 1024:
                raise ValueError(f"a partition's reserve on a Cluster needs the partition count, got {partitions}")
            fence = (self.partition, partitions)
            if not cluster:
                keys = (*keys, self.home().key("fence"))
        return Call("reserve", keys, (worker, token, lease_ms, *rules.argv(), *fence))

    def ack(self, job_id: str, token: str, worker: str, done_ttl_ms: int, result: str,
            run_ms: int, result_note: str = "", wake: bool = False, runtimes: tuple[str, int] | None = None) -> Call:
        """``result_note`` says why a result is not kept (too large, not JSON); ``wake``: the
        queue has a global_concurrency, so the freed slot wakes one waiting worker; ``runtimes``:
        (handler, how many run times to keep): the run is counted as the handler's, and its
        time kept among the handler's last ones (its percentiles, its adaptive limit)."""
        args = (job_id, token, worker, done_ttl_ms, result, run_ms, result_note, "1" if wake else "")
        if runtimes:
            args = (*args, runtimes[1], runtimes[0])
        return Call("ack", _ack_keys(self, runtimes[0] if runtimes else None), args)

    # -- operations on jobs (an operator's, from the CLI, the Client or the web page) -------

    def state_key(self, state: str) -> str:
        if state not in JOB_STATES:
            raise ValueError(f"state must be one of {', '.join(JOB_STATES)}, got {state!r}")
        return {"waiting": self.waiting, "delayed": self.delayed, "active": self.active, "dead": self.dead,
                "done": self.done}[state]

    def list_jobs(self, state: str, offset: int, want: int, budget: int, handler: str = "",
                  text: str = "", what: str = "full") -> Call:
        """``what``: 'full' (records and payloads), 'record' (no payload) or 'ids'. Waiting
        includes the jobs queued behind their key's head (listed first)."""
        keys = (self.state_key(state), self.meta, self.data)
        return Call("jobs", (*keys, self.queued) if state == "waiting" else keys,
                    (offset, want, budget, handler, text, what))

    def retry(self, ids: Sequence[str], mode: str = "strict") -> Call:
        """``mode``: 'strict' (all or nothing), 'any' (those that can be), 'check' (only say)."""
        return Call("retry", (self.dead, self.meta, self.waiting, self.delayed, self.wake, self.stats,
                              self.heads, self.key_lists, self.unique), (mode, *ids))

    def cancel(self, ids: Sequence[str]) -> Call:
        return Call("cancel", (self.waiting, self.delayed, self.meta, self.done, self.unique, self.stats,
                               self.heads, self.key_lists), tuple(ids))

    def purge(self, state: str, limit: int, ids: Sequence[str] = ()) -> Call:
        return Call("purge", (self.state_key(state), self.meta, self.data, self.unique, self.stats, self.heads,
                              self.key_lists, self.waiting, self.delayed), (state, limit, *ids))

    # -- adaptive timeouts: per handler, in each lane ------------------------------------

    @property
    def adaptive(self) -> str:
        """handler -> its learnt hard limit in ms (absent: the configured limit applies)."""
        return self.key("adaptive")

    @property
    def handler_counts(self) -> str:
        """'<handler>|<outcome>' -> runs, in this lane: done, failed, dead and each failure's
        reason (ack.lua and fail.lua count; handlers.lua and status read)."""
        return self.key("handler_counts")

    def runtimes(self, handler: str) -> str:
        return self.key(f"runtimes:{handler}")

    def adaptive_kills(self, handler: str) -> str:
        return self.key(f"adaptive_kills:{handler}")

    def censor(self, handler: str, limit_ms: int, keep: int, job_id: str) -> Call:
        return Call("censor", (self.runtimes(handler), self.handler_counts, self.adaptive_kills(handler)),
                    (limit_ms, keep, handler, job_id))

    def learn(self, handlers: Sequence[str], percentile: float, factor: float, min_ms: int, max_ms: int,
              samples: int, max_kills: int, window_ms: int) -> Call:
        keys = [self.adaptive]
        for h in handlers:
            keys += [self.runtimes(h), self.adaptive_kills(h)]
        return Call("handlers", tuple(keys), (percentile, factor, min_ms, max_ms, samples, max_kills,
                                              window_ms, *handlers))

    def fail(self, job_id: str, token: str, worker: str, error: dict | None, mode: str,
             backoff_ms: int, reason: str, default_max_retries: int) -> Call:
        """mode: ``retry`` (if attempts remain), ``dead`` (now) or ``requeue`` (attempt not counted)."""
        return Call("fail", _fail_keys(self),
                    (job_id, token, worker, json.dumps(error) if error else "", mode, backoff_ms,
                     reason, default_max_retries))

    def tick(self, done_ttl_ms: int) -> Call:
        return Call("tick", (self.waiting, self.delayed, self.active, self.meta, self.data,
                             self.done, self.wake, self.dead, self.stats, self.paused, self.tickets),
                    (done_ttl_ms,))

    def renew(self, lease_ms: int, workers: Sequence[str]) -> Call:
        return Call("renew", (self.active, self.leases), (lease_ms, *workers))

    # -- a partitioned queue's home slot -------------------------------------------------

    def hint_list(self, master: str) -> str:
        """The list a master's idle workers block on for this queue's partitions."""
        return self.home().key(f"hint:{master}")

    def partition_leases(self, master: str, lease_ms: int, partitions: int, per_host: int,
                         release: bool = False) -> Call:
        h = self.home()
        return Call("partitions", (h.key("holders"), h.key("masters"), h.key("hint:"), h.key("touched:")),
                    (master, lease_ms, partitions, per_host, "release" if release else "hold"))

    def hint(self, counts: Mapping[int, int]) -> Call:
        h = self.home()
        args: list[Any] = []
        for p, n in counts.items():
            args += [p, n]
        return Call("hint", (h.key("holders"), h.key("hint:"), h.key("touched:")), args)


# The keys of the two settles, built once per lane (and handler): a worker settles thousands of
# jobs a second, each of them naming the same dozen keys.
@functools.lru_cache(maxsize=4096)
def _ack_keys(k: QueueKeys, handler: str | None) -> tuple[str, ...]:
    keys = (k.active, k.meta, k.data, k.done, k.leases, k.stats, k.unique, k.waiting, k.wake, k.delayed,
            k.heads, k.key_lists)
    return keys if handler is None else (*keys, k.runtimes(handler), k.handler_counts)


@functools.lru_cache(maxsize=4096)
def _fail_keys(k: QueueKeys) -> tuple[str, ...]:
    return (k.active, k.meta, k.waiting, k.delayed, k.dead, k.leases, k.wake, k.stats, k.unique, k.heads,
            k.key_lists, k.handler_counts)
