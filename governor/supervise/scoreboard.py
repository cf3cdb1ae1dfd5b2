"""Per-worker lease state in shared memory, read by each party on its own clock.

Apache httpd's scoreboard and gunicorn's ``workertmp`` are the models: one
slot per worker in a shared mapping (a memfd), so that what one process
knows reaches another without a message or a wake-up.

What lives here is the *local lease deadline* of the job a worker runs: the
last moment, on this host's CLOCK_MONOTONIC (one clock for every process of
the host), by which Redis is provably still counting the lease as ours. It is
always a lower bound of the deadline Redis holds: the worker writes
``sent + lease - margin`` when a reserve it sent at ``sent`` comes back with a
job; the master writes the same for a renewal it sent at ``sent`` once Redis
confirmed it (and only if the worker still runs the job the renewal was for).
The master's sentry reads it: at the deadline, with no confirmed renewal, it
freezes the worker's whole tree (SIGSTOP) before Redis can let another host
take the job, whatever has stopped the renewals (a partition, a paused or dead
master, a stalled Redis); a later confirmed renewal thaws it, a lost lease
kills it.

Each field has one writer at a time, 8-byte aligned, so a reader never sees a
torn value: ``job`` (the worker: its job's number while the handler runs, 0
otherwise), ``deadline`` (the worker at reserve, the master at renewal),
``frozen`` (whoever freezes or thaws: the monotonic time it was frozen, 0 if
it is not).

Runs in: master, worker and the sentry.
"""

from __future__ import annotations

import mmap
import os
import struct
from time import monotonic as time_monotonic
from typing import NamedTuple

_SLOT = struct.Struct("=qdd")  # job, deadline, frozen
# One page per slot: a worker maps only its own page (``narrow``), so no job can write another
# worker's deadline. The memfd is sparse: untouched pages cost nothing.
SLOT_SIZE = mmap.PAGESIZE
DEFAULT_SLOTS = 65536  # 256 MiB of address space, sparse: a page costs memory once written


def margin(lease: float) -> float:
    """How much earlier than the lease we stop trusting it: room for the freeze itself, for
    a renewal reply in flight, and for clocks whose rates differ a little. A fifth of the
    lease, at least 250 ms, at most 5 s."""
    return min(max(0.2 * lease, 0.25), 5.0)


# -- the worker's report: what it runs and what it ran, read by the master on its own clock --
#
# Written only by the worker, under a sequence number (a seqlock: odd while writing), so the
# master reads a consistent copy without a lock or a message: a job's start and end cost the
# worker a few stores and the master nothing until it looks (every 50 ms while a worker is
# busy). Counters only grow; the master turns their growth into metrics.

OUTCOMES = ("ok", "exception", "timeout_soft", "throttled", "import_error", "not_allowed",
            "unknown_handler", "malformed", "other")
_OUTCOME_INDEX = {name: i for i, name in enumerate(OUTCOMES)}
_REPORT_AT = 32
# seq, run (the job number the run fields describe; 0: none), started (monotonic), soft, hard,
# attempt, partition, jobs finished, run seconds summed, wait seconds summed, adaptive (1: the
# hard limit is one learnt from the handler's runs, timeout.adaptive)
_REPORT = struct.Struct("=qqdddqqqddq")
_COUNTS_AT = _REPORT_AT + _REPORT.size
_TEXT_AT = 1024  # id, token, handler: a length byte pair and up to 255 bytes each
_TEXT = struct.Struct("=H255sH255sH255s")


class Report(NamedTuple):
    run: int
    started: float
    soft: float
    hard: float
    attempt: int
    partition: int
    finished: int
    run_seconds: float
    wait_seconds: float
    adaptive: int
    counts: tuple[int, ...]  # per outcome, then the run-time buckets, then the wait buckets
    job_id: str
    token: str
    handler: str


def _text(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")[:255]


def _bucket(buckets: tuple[float, ...], seconds: float) -> int:
    for i, bound in enumerate(buckets):
        if seconds <= bound:
            return i
    return len(buckets)


def _report(fields: tuple, counts: tuple, raw: tuple | None) -> Report:
    strings = ("", "", "")
    if raw is not None:
        strings = tuple(raw[i + 1][:min(raw[i], 255)].decode("utf-8", "surrogateescape") for i in (0, 2, 4))
    return Report(*fields[1:], counts, *strings)


class _ReportMixin:
    """Scoreboard methods for the report (kept apart from the lease fields above)."""

    mm: mmap.mmap
    buckets: tuple[float, ...]
    _counts: struct.Struct

    def _at(self, slot: int) -> int:  # (defined by Scoreboard)
        raise NotImplementedError

    def _write(self, slot: int, fields: tuple, counts: tuple | None = None, text: bytes | None = None) -> None:
        at = self._at(slot)
        seq = struct.unpack_from("=q", self.mm, at + _REPORT_AT)[0]
        struct.pack_into("=q", self.mm, at + _REPORT_AT, seq + 1)  # odd: being written
        if text is not None:
            self.mm[at + _TEXT_AT:at + _TEXT_AT + len(text)] = text
        if counts is not None:
            self._counts.pack_into(self.mm, at + _COUNTS_AT, *counts)
        # the fields under the odd number, and only then the even one: packed with the number
        # first, a reader could take the new (even) number with the fields still half written
        # (a fresh slot's first run read with started 0: killed at once as past its deadline)
        _REPORT.pack_into(self.mm, at + _REPORT_AT, seq + 1, *fields)
        struct.pack_into("=q", self.mm, at + _REPORT_AT, seq + 2)

    def start_run(self, slot: int, run: int, job_id: str, token: str, handler: str, attempt: int,
                  soft: float | None, hard: float | None, partition: int | None,
                  wait: float | None, adaptive: bool = False) -> None:
        """The worker starts running job number ``run`` (a handler is about to be called)."""
        old = self._own_report(slot)
        counts = list(old.counts)
        if wait is not None:
            counts[len(OUTCOMES) + len(self.buckets) + 1 + _bucket(self.buckets, wait)] += 1
        jid, tok, hdl = _text(job_id), _text(token), _text(handler)
        text = _TEXT.pack(len(jid), jid, len(tok), tok, len(hdl), hdl)
        self._write(slot, (run, time_monotonic(), soft or 0.0, hard or 0.0, attempt,
                           -1 if partition is None else partition, old.finished, old.run_seconds,
                           old.wait_seconds + (wait or 0.0), int(adaptive)), tuple(counts), text)

    def finish_run(self, slot: int, outcome: str, seconds: float) -> None:
        """The run ended with ``outcome`` after ``seconds``: counted, and no job is running."""
        old = self._own_report(slot)
        counts = list(old.counts)
        counts[_OUTCOME_INDEX.get(outcome, _OUTCOME_INDEX["other"])] += 1
        counts[len(OUTCOMES) + _bucket(self.buckets, seconds)] += 1
        self._write(slot, (0, old.started, old.soft, old.hard, old.attempt, old.partition,
                           old.finished + 1, old.run_seconds + seconds, old.wait_seconds, old.adaptive),
                    tuple(counts))

    def add_tally(self, slot: int, tally: Tally) -> None:
        """A worker running several jobs at once (its runs are in its run table, runtable.py)
        adds what its jobs did since the last write: one write per turn of its loop."""
        old = self._own_report(slot)
        counts = tuple(a + b for a, b in zip(old.counts, tally.counts, strict=True))
        self._write(slot, (0, old.started, old.soft, old.hard, old.attempt, old.partition,
                           old.finished + tally.finished, old.run_seconds + tally.run_seconds,
                           old.wait_seconds + tally.wait_seconds, old.adaptive), counts)

    def withdraw_run(self, slot: int) -> None:
        """The run started did not happen (a command pool's job its program never read): no
        job is running and nothing is counted, so a worker whose program never took a job still
        counts as one that finished none (its crashes back off)."""
        old = self._own_report(slot)
        self._write(slot, (0, old.started, old.soft, old.hard, old.attempt, old.partition,
                           old.finished, old.run_seconds, old.wait_seconds, old.adaptive))

    def report(self, slot: int, text: bool = True) -> Report | None:
        """A consistent copy of the slot's report (retried while the worker is writing it), or
        None when none could be had: the writer was preempted (or frozen) mid-write, or its
        job wrote the page. The reader looks again later rather than act on a torn copy."""
        at = self._at(slot)
        for _ in range(1000):
            fields = _REPORT.unpack_from(self.mm, at + _REPORT_AT)
            counts = self._counts.unpack_from(self.mm, at + _COUNTS_AT)
            raw = _TEXT.unpack_from(self.mm, at + _TEXT_AT) if text and fields[1] else None
            if fields[0] % 2 == 0 and struct.unpack_from("=q", self.mm, at + _REPORT_AT)[0] == fields[0]:
                return _report(fields, counts, raw)
        return None

    def _own_report(self, slot: int) -> Report:
        """The writer's read of its own report: it is the only writer, so no retry (and a page
        its job scribbled on is read as it is: the master judges it)."""
        at = self._at(slot)
        return _report(_REPORT.unpack_from(self.mm, at + _REPORT_AT),
                       self._counts.unpack_from(self.mm, at + _COUNTS_AT), None)


class Tally:
    """What the jobs of a worker running several at once did between two writes of its report
    (counted by its control thread, written by ``Scoreboard.add_tally``)."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self._waits = len(OUTCOMES) + len(buckets) + 1
        self.clear()

    def clear(self) -> None:
        self.counts = [0] * (len(OUTCOMES) + 2 * (len(self.buckets) + 1))
        self.finished, self.run_seconds, self.wait_seconds, self.dirty = 0, 0.0, 0.0, False

    def start(self, wait: float | None) -> None:
        if wait is not None:
            self.counts[self._waits + _bucket(self.buckets, wait)] += 1
            self.wait_seconds += wait
            self.dirty = True

    def end(self, outcome: str, seconds: float) -> None:
        self.counts[_OUTCOME_INDEX.get(outcome, _OUTCOME_INDEX["other"])] += 1
        self.counts[len(OUTCOMES) + _bucket(self.buckets, seconds)] += 1
        self.finished += 1
        self.run_seconds += seconds
        self.dirty = True


class Scoreboard(_ReportMixin):
    """The shared mapping. Created by the master (before any fork: workers inherit the mapping)
    and opened by the sentry from the memfd it is handed."""

    def __init__(self, slots: int = DEFAULT_SLOTS, fd: int | None = None,
                 buckets: tuple[float, ...] = ()) -> None:
        """``buckets``: upper bounds of the run-time and wait histograms workers keep in their
        slot (the master's metrics' buckets); the sentry, which reads leases only, passes none."""
        self.buckets = buckets
        self._counts = struct.Struct(f"={len(OUTCOMES) + 2 * (len(buckets) + 1)}q")
        size = slots * SLOT_SIZE
        if fd is None:
            fd = os.memfd_create("governor-scoreboard")
            os.ftruncate(fd, size)
        self.fd = fd
        self.slots = slots
        self.mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.base = 0  # the first slot this mapping holds (a narrowed one holds just one)
        # the master's: 1 for each slot a worker holds. A worker running several jobs at once
        # holds its own slot and, right after it, the pages of its run table (runtable.py).
        self._taken = bytearray(slots)
        self._spans: dict[int, int] = {}  # first slot -> how many slots its worker holds

    def allocate(self, pages: int = 1) -> int | None:
        """The first of ``pages`` cleared, consecutive slots for a new worker, or None when no
        such run is free."""
        slot = self._taken.find(bytes(pages))
        if slot < 0:
            return None
        self._taken[slot:slot + pages] = b"\x01" * pages
        self._spans[slot] = pages
        self.clear(slot)
        # a run table's pages whole (runtable.py): entries left by the worker that held them
        # before would be read as this one's jobs
        self.mm[self._at(slot + 1):self._at(slot + pages)] = bytes((pages - 1) * SLOT_SIZE)
        return slot

    def release(self, slot: int) -> None:
        """The worker is reaped: its slots may serve another."""
        if slot >= 0:
            pages = self._spans.pop(slot, 1)
            self.clear(slot)
            self._taken[slot:slot + pages] = bytes(pages)

    def fileno(self) -> int:
        return self.fd

    def _at(self, slot: int) -> int:
        return (slot - self.base) * SLOT_SIZE

    def narrow(self, slot: int) -> None:
        """In a new worker, before any job code: keep a mapping of our own slots only (the
        whole table, inherited from the master, is unmapped)."""
        pages = self._spans.get(slot, 1)
        own = mmap.mmap(self.fd, pages * SLOT_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                        offset=slot * SLOT_SIZE)
        self.mm.close()
        self.mm, self.base, self.slots = own, slot, pages

    def read(self, slot: int) -> tuple[int, float, float]:
        """(job, deadline, frozen) of one slot."""
        return _SLOT.unpack_from(self.mm, self._at(slot))

    def clear(self, slot: int) -> None:
        at = self._at(slot)
        self.mm[at:at + _TEXT_AT + _TEXT.size] = bytes(_TEXT_AT + _TEXT.size)  # the report too
        _SLOT.pack_into(self.mm, at, 0, 0.0, 0.0)
        struct.pack_into("=q", self.mm, at + _SLOT.size, -1)

    def begin(self, slot: int, job: int, deadline: float, partition: int = -1) -> None:
        """The worker got job number ``job`` (> 0), leased until at least ``deadline``, in
        ``partition`` of a partitioned queue (-1: none), where its lease is renewed."""
        struct.pack_into("=d", self.mm, self._at(slot) + 8, deadline)  # before the job number:
        struct.pack_into("=q", self.mm, self._at(slot) + _SLOT.size, partition)  # a reader of the
        struct.pack_into("=q", self.mm, self._at(slot), job)  # job sees its deadline and partition

    def partition(self, slot: int) -> int | None:
        """The partition of the job in the slot (written with it), or None."""
        part = struct.unpack_from("=q", self.mm, self._at(slot) + _SLOT.size)[0]
        return part if part >= 0 else None

    def end(self, slot: int) -> None:
        """The handler returned: nothing of the job runs any more (its settle is fenced)."""
        struct.pack_into("=q", self.mm, self._at(slot), 0)

    def extend(self, slot: int, job: int, deadline: float) -> bool:
        """A renewal for job ``job`` was confirmed: its deadline becomes the renewal's, if the
        worker still runs that job. Set, not raised: the renewal was sent after that job's
        reserve, so it is the later proof, and after a reload that shortened ``lease`` it is
        the only true one (Redis now holds the shorter lease). A renewal sent before a newer
        reserve would still be a lower bound of the newer lease: safe, merely conservative."""
        if self.read(slot)[0] != job:
            return False
        struct.pack_into("=d", self.mm, self._at(slot) + 8, deadline)
        return True

    def set_frozen(self, slot: int, when: float) -> None:
        struct.pack_into("=d", self.mm, self._at(slot) + 16, when)

    def close(self) -> None:
        self.mm.close()
        os.close(self.fd)

