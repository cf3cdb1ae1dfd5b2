"""Running governor's Lua scripts: loading them, ``Call`` and ``run``, and settle-and-reserve.

Every state change of a job is one script (see ``governor/protocol/lua``), so a crash
between two commands can never lose or duplicate a job. Scripts are sent as
EVALSHA (reloaded once if Redis forgot them); a worker settles one job and reserves the next
in one script call (``settle_and_reserve``), so a job costs a single round trip in steady state.
The keys each script is given are built in keys.py, the replies read in records.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any, NamedTuple

import redis

from governor.protocol.connection import is_cluster

# Each of these files defines one transition as a function of its KEYS and ARGV, so that one
# text serves both its own script and settle_reserve, which runs a settle and a reserve in turn.
_TRANSITIONS = ("ack", "fail", "reserve")


def _load_scripts() -> dict[str, tuple[str, str]]:
    """name -> (source, SHA1): lib.lua, the shared prelude, then the script's own text."""
    pkg = resources.files("governor.protocol") / "lua"
    prelude = (pkg / "lib.lua").read_text()

    def text(name: str) -> str:
        return (pkg / f"{name}.lua").read_text()

    bodies = {name: text(name) for name in ("enqueue", "tick", "renew", "limit", "partitions", "hint", "handlers",
                                                "censor", "fleet", "jobs", "retry", "registry",
                                                "cancel", "purge")}
    for name in _TRANSITIONS:
        bodies[name] = f"{text(name)}\nreturn {name}(KEYS, ARGV)\n"
    bodies["settle_reserve"] = "\n".join(text(name) for name in (*_TRANSITIONS, "settle_reserve"))
    bodies["flight"] = "\n".join(text(name) for name in (*_TRANSITIONS, "flight"))
    scripts = {}
    for name, body in bodies.items():
        src = prelude + "\n" + body
        scripts[name] = (src, hashlib.sha1(src.encode()).hexdigest())
    return scripts


_SCRIPTS = _load_scripts()

RESERVE_LANE_KEYS = 11  # reserve.lua's keys of its own lane, before the limits' and the queue fence


class Call(NamedTuple):
    """One script invocation, ready to run alone or in a pipeline."""

    script: str
    keys: Sequence[str]
    args: Sequence[Any]


def run(client: redis.Redis, *calls: Call, atomic: bool = False) -> list[Any]:
    """Runs the calls in one round trip; reloads the scripts once if Redis forgot them.

    A NOSCRIPT error means that command did not run, so re-running just the
    failed ones is safe (a restarted Redis starts with an empty script cache).
    ``atomic`` runs several calls as one MULTI/EXEC that loads its scripts first,
    so no NOSCRIPT can split it: Redis runs all of them or, if it refuses the
    transaction (OOM, READONLY), none.
    """
    if atomic and len(calls) > 1:
        return _execute_atomic(client, calls)
    results = _execute(client, calls)
    missing = [i for i, r in enumerate(results) if isinstance(r, redis.exceptions.NoScriptError)]
    if missing:
        for src, _sha in _SCRIPTS.values():
            client.script_load(src)
        retried = _execute(client, [calls[i] for i in missing])
        for i, r in zip(missing, retried, strict=True):
            results[i] = r
    for r in results:
        if isinstance(r, Exception):
            raise r
    return results


def _execute_atomic(client: redis.Redis, calls: Sequence[Call]) -> list[Any]:
    pipe = client.pipeline(transaction=True)
    if is_cluster(client):
        # a Cluster transaction holds commands of one slot only (SCRIPT LOAD has none): the
        # scripts go whole, so no NOSCRIPT can split the transaction either
        for c in calls:
            pipe.execute_command("EVAL", _SCRIPTS[c.script][0], len(c.keys), *c.keys, *c.args)
        return pipe.execute(raise_on_error=True)
    for name in dict.fromkeys(c.script for c in calls):
        pipe.script_load(_SCRIPTS[name][0])
    for c in calls:
        pipe.execute_command("EVALSHA", _SCRIPTS[c.script][1], len(c.keys), *c.keys, *c.args)
    results = pipe.execute(raise_on_error=True)
    return results[len(results) - len(calls):]


def _execute(client: redis.Redis, calls: Sequence[Call]) -> list[Any]:
    if len(calls) == 1:
        c = calls[0]
        try:
            return [client.evalsha(_SCRIPTS[c.script][1], len(c.keys), *c.keys, *c.args)]
        except redis.exceptions.NoScriptError as exc:
            return [exc]
    pipe = client.pipeline(transaction=False)
    cluster = is_cluster(client)
    for c in calls:
        # execute_command: a Cluster pipeline refuses .evalsha; and there it is sent to the
        # node of its first key, named here: else redis-py asks a node (COMMAND GETKEYS) for
        # every script of every pipeline, one round trip each, before sending it
        route = {"target_nodes": client.get_node_from_key(c.keys[0])} if cluster else {}
        pipe.execute_command("EVALSHA", _SCRIPTS[c.script][1], len(c.keys), *c.keys, *c.args, **route)
    return pipe.execute(raise_on_error=False)


def hash_tag(key: str) -> str:
    """The part of a key Redis Cluster hashes to pick its slot: the first ``{...}`` holding at
    least one character, else the whole key."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1:end]
    return key


def settle_and_reserve(settle: Call, reserve: Call) -> Call:
    """One script call that runs ``settle`` (an ack or a fail) and then ``reserve``: a worker's
    steady state in one round trip and one script run, instead of two scripts in a pipeline.

    Both are built as for running alone (``QueueKeys.ack``/``fail`` and ``reserve``), and must
    be of one lane: the settle's keys and the reserve's queue keys under one hash tag (one
    queue, or one partition of a partitioned queue), which on a Cluster is one slot. The
    reserve's rate-limit keys go as the reserve alone has them. Raises ValueError otherwise
    (a job of one partition settled as the worker reserves from another: send the two calls).

    The reply is ``[settle_reply, reserve_reply]``, each exactly what ack.lua or fail.lua, and
    reserve.lua, return alone. The settle's fencing is unchanged: a stale token makes it 0
    (lost) and the reserve runs all the same. Re-sending the call after a lost reply (same
    tokens) is safe: a settled run answers as it did, and the reserve hands back the job it
    leased to this worker under that token, so nothing is lost or done twice.

    Layout: KEYS are the settle's keys then the reserve's; ARGV is the settle's script name,
    its key count, its argument count, then the settle's arguments and the reserve's."""
    if settle.script not in ("ack", "fail") or reserve.script != "reserve":
        raise ValueError(f"settle_and_reserve takes an ack or a fail, then a reserve; got "
                         f"{settle.script!r} and {reserve.script!r}")
    lane = reserve.keys[:RESERVE_LANE_KEYS]  # then the limits' keys and a partition's queue fence
    tags = {hash_tag(k) for k in (*settle.keys, *lane)}
    if len(tags) != 1:
        raise ValueError(f"a settle and a reserve run as one script only within one hash tag; "
                         f"these keys span {', '.join(sorted(tags))}")
    return Call("settle_reserve", (*settle.keys, *reserve.keys),
                (settle.script, len(settle.keys), len(settle.args), *settle.args, *reserve.args))


def flight(settles: Sequence[Call], slots: Sequence[tuple[str, str]], reserve: Call | None) -> Call:
    """One script call that settles ``settles`` (acks and fails of one lane) and then reserves a
    job for each of ``slots`` (worker id, token) in turn, stopping at the first reply that is
    not a job: a worker running many jobs settles and refills them all in one round trip.

    ``reserve`` is built as for running alone (its worker and token are replaced per slot);
    every call must be of one lane, as for ``settle_and_reserve``: each distinct set of settle
    keys is sent once (acks differ only by their handler's run-times list), not once per
    settle. The reply is ``[settle replies ..., [reserve replies ...]]``, each what its script
    returns alone."""
    sets: dict[tuple[str, ...], int] = {}
    args: list[Any] = []
    for c in settles:
        if c.script not in ("ack", "fail"):
            raise ValueError(f"flight settles acks and fails, got {c.script!r}")
        number = sets.setdefault(tuple(c.keys), len(sets) + 1)
        args.extend((c.script, number, len(c.args), *c.args))
    tags = {hash_tag(keys[0]) for keys in sets}
    if reserve is not None:
        tags.add(hash_tag(reserve.keys[0]))
    if len(tags) > 1:
        raise ValueError(f"a flight call runs within one hash tag; these keys span {', '.join(sorted(tags))}")
    pairs = [x for pair in slots for x in pair] if reserve else []
    rest = list(reserve.args[2:]) if reserve else []
    keys = [k for keyset in sets for k in keyset]
    return Call("flight", (*keys, *(reserve.keys if reserve else ())),
                (len(settles), len(sets), *(len(keyset) for keyset in sets), *args, len(pairs) // 2, *pairs, *rest))
