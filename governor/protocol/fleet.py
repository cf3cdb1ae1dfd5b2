"""The fleet registry's keys and calls: every master's record in Redis, alive while it beats.

One hash of records and one sorted set of expiries (on Redis's clock), under one hash tag
so that a Cluster keeps them in one slot; fleet.lua does every transition."""

from __future__ import annotations

import json
from typing import Any

from governor.names import internal_tag
from governor.protocol.fleetshape import problem
from governor.protocol.scripts import Call, run
from governor.untrusted import loads

MAX_MASTERS = 500  # records read per call: the registry is writable by any client, every read is bounded
MAX_RECORD = 4 << 20  # bytes; a bigger record is not read (a real one is a few hundred bytes a worker)


class FleetKeys:
    """Under ``{prefix/fleet}``, where no queue's keys can be (names.py). Older versions kept
    them under ``{prefix:fleet}``, which are a queue named ``fleet``'s: a partitioned one's
    lease zset was the records hash (WRONGTYPE on every pass). Moving them is safe in a rolling
    upgrade: the registry only shows who is alive (``status``, the page), each master rewrites
    its record with every heartbeat, and nothing else reads it; until every master runs this
    version, each version's ``status`` lists its own."""

    def __init__(self, prefix: str) -> None:
        tag = internal_tag(prefix, "fleet")
        self.records = f"{tag}:masters"
        self.alive = f"{tag}:alive"

    def beat(self, master: str, lease_ms: int, record: dict[str, Any] | None) -> Call:
        """``record`` None: the expiry only (the record written last stays)."""
        text = json.dumps(record, separators=(",", ":"), default=str) if record is not None else ""
        return Call("fleet", (self.records, self.alive), ("beat", master, lease_ms, text))

    def leave(self, master: str) -> Call:
        return Call("fleet", (self.records, self.alive), ("leave", master))

    def read(self, limit: int = MAX_MASTERS) -> Call:
        """The ``limit`` masters that expire first, then how many are alive in all."""
        return Call("fleet", (self.records, self.alive), ("read", limit, MAX_RECORD))


def fleet(client: Any, prefix: str, limit: int = MAX_MASTERS) -> list[dict[str, Any]]:
    """Every live master's last record (``id``: its name in the registry, ``expires_in``: seconds until it
    drops out without another heartbeat), at most ``limit`` of them. A record that does not decode
    or has another shape than a master writes (anyone can write the hash) is ``{"id", "expires_in",
    "error"}`` instead: shown as unreadable, never rendered."""
    reply = run(client, FleetKeys(prefix).read(limit))[0]
    out = []
    for i in range(0, len(reply) - 1, 3):
        name = reply[i].decode(errors="replace")[:200]
        try:
            if isinstance(reply[i + 1], int):
                raise ValueError(f"{reply[i + 1]} bytes, more than {MAX_RECORD}")
            record = loads(reply[i + 1], "a master's fleet record")
            why = problem(record)
            if why:
                raise ValueError(why)
        except ValueError as exc:
            record = {"error": f"unreadable record: {str(exc)[:300]}"}
        out.append({**record, "id": name, "expires_in": int(reply[i + 2]) / 1000.0})
    return out
