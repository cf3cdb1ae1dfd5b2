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
"""

from __future__ import annotations

import mmap
import os
import struct

_SLOT = struct.Struct("=qdd")  # job, deadline, frozen
# One page per slot: a worker maps only its own page (``narrow``), so no job can write another
# worker's deadline. The memfd is sparse: untouched pages cost nothing.
SLOT_SIZE = mmap.PAGESIZE
DEFAULT_SLOTS = 4096


def margin(lease: float) -> float:
    """How much earlier than the lease we stop trusting it: room for the freeze itself, for
    a renewal reply in flight, and for clocks whose rates differ a little. A fifth of the
    lease, at least 250 ms, at most 5 s."""
    return min(max(0.2 * lease, 0.25), 5.0)


class Scoreboard:
    """The shared mapping. Created by the master (before any fork: workers inherit the mapping)
    and opened by the sentry from the memfd it is handed."""

    def __init__(self, slots: int = DEFAULT_SLOTS, fd: int | None = None) -> None:
        size = slots * SLOT_SIZE
        if fd is None:
            fd = os.memfd_create("governor-scoreboard")
            os.ftruncate(fd, size)
        self.fd = fd
        self.slots = slots
        self.mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.base = 0  # the first slot this mapping holds (a narrowed one holds just one)
        self._free = list(range(slots - 1, -1, -1))  # the master's: which slots no worker holds

    def allocate(self) -> int | None:
        """A cleared slot for a new worker, or None when all are taken."""
        if not self._free:
            return None
        slot = self._free.pop()
        self.clear(slot)
        return slot

    def release(self, slot: int) -> None:
        """The worker is reaped: its slot may serve another."""
        if slot >= 0:
            self.clear(slot)
            self._free.append(slot)

    def fileno(self) -> int:
        return self.fd

    def _at(self, slot: int) -> int:
        return (slot - self.base) * SLOT_SIZE

    def narrow(self, slot: int) -> None:
        """In a new worker, before any job code: keep a mapping of our own slot only (the
        whole table, inherited from the master, is unmapped)."""
        own = mmap.mmap(self.fd, SLOT_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                        offset=slot * SLOT_SIZE)
        self.mm.close()
        self.mm, self.base, self.slots = own, slot, 1

    def read(self, slot: int) -> tuple[int, float, float]:
        """(job, deadline, frozen) of one slot."""
        return _SLOT.unpack_from(self.mm, self._at(slot))

    def clear(self, slot: int) -> None:
        _SLOT.pack_into(self.mm, self._at(slot), 0, 0.0, 0.0)
        struct.pack_into("=q", self.mm, self._at(slot) + _SLOT.size, -1)

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
