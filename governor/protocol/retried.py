"""What an operator's retry answers: how many jobs it sent back, and which it left dead because
another live job holds their unique key (retry.lua). ``QueueOperations.retry`` (client_ops.py)
answers one."""

from __future__ import annotations

from collections.abc import Iterable


class Retried(int):
    """How many jobs a retry sent back, and ``skipped``: (job id, unique key, id of the live job
    holding that key) of each dead job it left dead, as retrying it would have made two live
    jobs of one unique key."""

    skipped: tuple[tuple[str, str, str], ...]

    def __new__(cls, n: int, skipped: Iterable[tuple[str, str, str]] = ()) -> Retried:
        out = super().__new__(cls, n)
        out.skipped = tuple(skipped)
        return out


def holder(code: list[bytes]) -> tuple[str, str]:
    """(unique key, holder id) of retry.lua's answer for a job whose unique key is held."""
    return code[0].decode(errors="surrogateescape"), code[1].decode(errors="surrogateescape")


def held_text(job_id: str, unique: str, holder_id: str) -> str:
    return (f"job {job_id}: its unique key {unique!r} is held by live job {holder_id} (a retry would "
            "make two live jobs of that key; retry it once that job is done, or delete it)")
