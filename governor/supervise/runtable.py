"""A worker's run table: one entry per job slot, in the scoreboard pages right after its own
(jobs_per_worker > 1), read by the master on its own clock.

The worker's own scoreboard page still holds what concerns the process (the lease deadline
the sentry guards, the counters the metrics come from); the run table says which job each
of its slots holds and since when, under which limits. From it the master enforces each
job's hard limit on its own clock (``started + hard + grace``), renews the lease of every
job the worker holds, and knows exactly which jobs a dead worker held (so it can charge the
one that overran and requeue its neighbours uncharged). Like the report, each entry is a
seqlock: odd while the worker writes it, so a reader retries instead of reading it torn; the
header's generation moves with every write, so a master that finds it unchanged reads no
entry at all. Only the worker's control thread writes (never a job's thread).

Runs in: worker (writes) and master (reads).
"""

from __future__ import annotations

import math
import struct
from typing import NamedTuple

from governor.supervise.scoreboard import SLOT_SIZE, Scoreboard

HELD, RUNNING = 1, 2  # an entry's state: reserved (a suspect waiting to run alone), running
# generation, jobs held, since when (monotonic) the event loop has been blocked (0: it is not),
# the slot whose job blocks it, and the earliest moment a job's hard limit and grace run out
# (0: none has a limit): all the master reads on its clock; the entries only when it must
_HEADER = struct.Struct("=qqdqd")
_ENTRY_AT = 64
_ENTRY_SIZE = 1024
# seq, run (the worker's number for the run; 0: the slot is free), state, started (monotonic),
# soft, hard, attempt, partition (-1: none), adaptive
_FIELDS = struct.Struct("=qqqdddqqq")
_TEXT_AT = 96
_TEXT = struct.Struct("=H255sH255sH255s")  # id, token, handler


class RunEntry(NamedTuple):
    index: int  # the slot's number in the worker (its lease is held as ``<worker id>~<index>``)
    run: int
    state: int
    started: float
    soft: float
    hard: float
    attempt: int
    partition: int
    adaptive: int
    job_id: str
    token: str
    handler: str


def pages_for(slots: int) -> int:
    """Scoreboard pages a worker with ``slots`` job slots holds: its own and its run table's."""
    return 1 + math.ceil((_ENTRY_AT + slots * _ENTRY_SIZE) / SLOT_SIZE)


def slot_id(worker: str, index: int) -> str:
    """The id a slot's lease is held under in Redis: its worker's id and its number."""
    return f"{worker}~{index}"


def owner_of(holder: str) -> str:
    """The worker id a lease holder names (a slot's id names its worker)."""
    return holder.split("~", 1)[0]


def _text(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")[:255]


class RunTable:
    """The run table of the worker in scoreboard slot ``slot``, with ``slots`` entries."""

    def __init__(self, board: Scoreboard, slot: int, slots: int) -> None:
        self.board, self.slot, self.slots = board, slot, slots
        self._gen = 0

    def _at(self, index: int = -1) -> int:
        base = (self.slot + 1 - self.board.base) * SLOT_SIZE
        return base if index < 0 else base + _ENTRY_AT + index * _ENTRY_SIZE

    # -- the worker's side ----------------------------------------------------------------

    def _write(self, index: int, fields: tuple, text: bytes | None = None, held: int | None = None) -> None:
        mm, at = self.board.mm, self._at(index)
        seq = struct.unpack_from("=q", mm, at)[0]
        struct.pack_into("=q", mm, at, seq + 1)  # odd: being written
        if text is not None:
            mm[at + _TEXT_AT:at + _TEXT_AT + len(text)] = text
        _FIELDS.pack_into(mm, at, seq + 1, *fields)
        struct.pack_into("=q", mm, at, seq + 2)
        self._gen += 1
        header = _HEADER.unpack_from(mm, self._at())
        _HEADER.pack_into(mm, self._at(), self._gen, header[1] if held is None else held, *header[2:])

    def blocked(self, since: float, index: int) -> None:
        """The event loop has not turned since ``since`` (0: it turns), held by the job in
        slot ``index``: sync code in an ``async def`` (its limits still hold, from outside)."""
        self._gen += 1
        header = _HEADER.unpack_from(self.board.mm, self._at())
        _HEADER.pack_into(self.board.mm, self._at(), self._gen, header[1], since, index, header[4])

    def kill_at(self, when: float) -> None:
        """The earliest moment a job in flight is past its hard limit and grace (0: none)."""
        self._gen += 1
        header = _HEADER.unpack_from(self.board.mm, self._at())
        _HEADER.pack_into(self.board.mm, self._at(), self._gen, *header[1:4], when)

    def hold(self, index: int, run: int, job_id: str, token: str, handler: str, partition: int | None,
             held: int, started: tuple[float, float | None, float | None, int, bool] | None = None) -> None:
        """Slot ``index`` holds job ``job_id`` (leased under ``token``): not yet running, or
        running since ``started`` = (when, soft, hard, attempt, adaptive) (one write, not two)."""
        jid, tok, hdl = _text(job_id), _text(token), _text(handler)
        part = -1 if partition is None else partition
        if started is None:
            fields: tuple = (run, HELD, 0.0, 0.0, 0.0, 0, part, 0)
        else:
            when, soft, hard, attempt, adaptive = started
            fields = (run, RUNNING, when, soft or 0.0, hard or 0.0, attempt, part, int(adaptive))
        self._write(index, fields, _TEXT.pack(len(jid), jid, len(tok), tok, len(hdl), hdl), held)

    def start(self, index: int, started: float, soft: float | None, hard: float | None, attempt: int,
              adaptive: bool) -> None:
        """The job slot ``index`` holds starts running now (``started``, monotonic)."""
        old = _FIELDS.unpack_from(self.board.mm, self._at(index))
        self._write(index, (old[1], RUNNING, started, soft or 0.0, hard or 0.0, attempt, old[7], int(adaptive)))

    def free(self, index: int, held: int) -> None:
        """Slot ``index`` holds nothing (its job ended: its settle is fenced by the token)."""
        self._write(index, (0, 0, 0.0, 0.0, 0.0, 0, -1, 0), None, held)

    # -- the master's side ----------------------------------------------------------------

    def generation(self) -> tuple[int, int, float, int, float]:
        """(generation, jobs held, loop blocked since, by slot, kill at): the generation moves
        with every write of the worker."""
        return _HEADER.unpack_from(self.board.mm, self._at())

    def entries(self) -> list[RunEntry] | None:
        """The slots holding a job, each a consistent copy; None when one stayed torn (the
        worker was preempted or frozen mid-write): look again later."""
        out = []
        mm = self.board.mm
        for index in range(self.slots):
            at = self._at(index)
            for _ in range(1000):
                fields = _FIELDS.unpack_from(mm, at)
                if fields[1] == 0 and fields[0] % 2 == 0:
                    break
                raw = _TEXT.unpack_from(mm, at + _TEXT_AT)
                if fields[0] % 2 == 0 and struct.unpack_from("=q", mm, at)[0] == fields[0]:
                    texts = tuple(raw[i + 1][:min(raw[i], 255)].decode("utf-8", "surrogateescape") for i in (0, 2, 4))
                    out.append(RunEntry(index, *fields[1:], *texts))
                    break
            else:
                return None
        return out
