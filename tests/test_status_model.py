"""The status model's TypedDicts (governor.ops.status) name what masters really send.

They describe, they do not check: nothing at run time compares a snapshot with them. These
tests keep them honest: every key the fleet record's validator (protocol.fleetshape) knows,
and every key a running master puts in its control socket's answer and its fleet record, is
declared; so a field added on one side and not the other fails here."""

from __future__ import annotations

from typing import Any

from governor.ops import status as model
from governor.protocol import fleetshape
from governor.protocol.fleet import fleet

from conftest import wait_for


def keys(typed: Any) -> set[str]:
    return set(typed.__required_keys__ | typed.__optional_keys__)


def spec_keys(spec: dict[str, Any]) -> set[str]:
    return {k.lstrip("?") for k in spec}


def structured(spec: Any) -> dict[str, Any]:
    """The object spec inside an optional one (``_opt({...})``)."""
    return next(s for s in spec if isinstance(s, dict)) if isinstance(spec, tuple) else spec


def test_every_field_fleetshape_checks_is_declared():
    pairs = [(fleetshape.RECORD, model.MasterStatus), (fleetshape.MASTER, model.MasterSnapshot),
             (fleetshape.POOL, model.PoolSnapshot), (fleetshape.WORKER, model.WorkerSnapshot),
             (fleetshape.JOB, model.JobSnapshot), (fleetshape.DECISION, model.ScaleDecision),
             (fleetshape.FIGURES, model.HandlerFigures),
             (structured(fleetshape.POOL["?backoff"]), model.Backoff),
             (structured(fleetshape.POOL["?autoscale"]), model.AutoscaleSnapshot)]
    for spec, typed in pairs:
        assert spec_keys(spec) <= keys(typed), (typed.__name__, spec_keys(spec) - keys(typed))


def undeclared(status: dict[str, Any]) -> list[str]:
    """Keys of a master's status (or fleet record) that the model does not declare."""
    out = [f"status.{k}" for k in set(status) - keys(model.FleetRecord)]
    out += [f"master.{k}" for k in set(status["master"]) - keys(model.MasterSnapshot)]
    for p in status["pools"]:
        out += [f"pool.{k}" for k in set(p) - keys(model.PoolSnapshot)]
        out += [f"autoscale.{k}" for k in set(p.get("autoscale") or {}) - keys(model.AutoscaleSnapshot)]
        for w in p["workers"]:
            out += [f"worker.{k}" for k in set(w) - keys(model.WorkerSnapshot)]
            out += [f"job.{k}" for k in set(w.get("job") or {}) - keys(model.JobSnapshot)]
    for part in status.get("partitions", {}).values():
        out += [f"partitions.{k}" for k in set(part) - keys(model.PartitionLeases)]
    for figures in (f for hs in status.get("handlers", {}).values() for f in hs.values()):
        out += [f"handler.{k}" for k in set(figures) - keys(model.HandlerFigures)]
    return out


def test_what_a_master_sends_is_declared(governor):
    governor.start({"work": {"concurrency": 1}, "wide": {"concurrency": 1, "partitions": 2},
                    "elastic": {"concurrency": {"min": 1, "max": 2}}})
    governor.client.enqueue("work", "tasks:sleep_then_record", "s", 5)
    wait_for(lambda: any(w.get("job") for p in governor.status()["pools"] for w in p["workers"]), 10, "a busy worker")
    assert undeclared(governor.status()) == []
    records = wait_for(lambda: fleet(governor.client.redis, governor.prefix), 10, "the fleet record")
    assert "error" not in records[0] and undeclared(records[0]) == []
