"""Running governor's Lua scripts: loading them, ``Call`` and ``run``, and settle-and-reserve.

Every state change of a job is one script (see ``governor/protocol/lua``), so a crash
between two commands can never lose or duplicate a job. Scripts are sent as
EVALSHA (reloaded once if Redis forgot them); a worker settles one job and reserves the next
in one script call (``settle_and_reserve``), so a job costs a single round trip in steady state.
The keys each script is given are built in keys.py, the replies read in records.py.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from importlib import resources
from typing import Any, NamedTuple

import redis

from governor.protocol import library
from governor.protocol.connection import is_cluster

# Each of these files defines one transition as a function of its KEYS and ARGV, so that one
# text serves both its own script and the composites (settle_reserve, flight), which run a
# settle and a reserve in turn.
_TRANSITIONS = library.TRANSITIONS
_OWN = ("enqueue", "tick", "renew", "limit", "partitions", "hint", "handlers", "censor", "fleet", "jobs", "retry",
        "registry", "cancel", "purge")
_COMPOSITES = ("settle_reserve", "flight")


def _load_scripts() -> tuple[dict[str, tuple[str, str]], str]:
    """(name -> (script source, SHA1), the function library's source). A script is the shared
    prelude (lua/lib/, library.PRELUDE), then its own text (a composite's: the transitions it
    runs, then its own); the library holds each once (library.py)."""
    pkg = resources.files("governor.protocol") / "lua"
    prelude = library.prelude()

    def text(name: str) -> str:
        return (pkg / f"{name}.lua").read_text()

    own = {name: text(name) for name in (*_OWN, *_TRANSITIONS, *_COMPOSITES)}
    bodies = {name: own[name] for name in _OWN}
    for name in _TRANSITIONS:
        bodies[name] = f"{own[name]}\nreturn {name}(KEYS, ARGV)\n"
    for name in _COMPOSITES:
        bodies[name] = "\n".join([*(own[t] for t in _TRANSITIONS), own[name]])
    scripts = {}
    for name, body in bodies.items():
        src = prelude + "\n" + body
        scripts[name] = (src, hashlib.sha1(src.encode()).hexdigest())
    return scripts, library.build({name: own[name] for name in (*_OWN, *_TRANSITIONS, *_COMPOSITES)})


_SCRIPTS, LIBRARY_SOURCE = _load_scripts()
_FUNCTIONS = {name: library.function_name(name) for name in _SCRIPTS}
# GOVERNOR_SCRIPTS=1 forces script mode (EVALSHA) on a Redis that has functions: the documented
# switch, for a proxy that passes EVALSHA but not FCALL, and for the test suite's second run
FORCE_SCRIPTS = os.environ.get("GOVERNOR_SCRIPTS", "") not in ("", "0")

RESERVE_LANE_KEYS = 11  # reserve.lua's keys of its own lane, before the limits' and the queue fence


class Call(NamedTuple):
    """One script invocation, ready to run alone or in a pipeline."""

    script: str
    keys: Sequence[str]
    args: Sequence[Any]


def run(client: redis.Redis, *calls: Call, atomic: bool = False) -> list[Any]:
    """Runs the calls in one round trip: as functions of governor's library (FCALL) on a Redis
    that has them, else as scripts (EVALSHA); loads the library, or the scripts, once if Redis
    does not have them (a restarted or failed-over node), and re-runs just the calls that
    failed for it (such a call did not run). ``atomic`` runs several calls as one MULTI/EXEC
    that loads what it needs first, so no missing library or script can split it: Redis runs
    all of them or, if it refuses the transaction (OOM, READONLY), none.
    """
    if atomic and len(calls) > 1:
        return _execute_atomic(client, calls)
    if uses_functions(client):
        results = _execute(client, calls, functions=True)
        missing = [i for i, r in enumerate(results) if _no_function(r)]
        if missing and _no_fcall(results[missing[0]]):
            _set_mode(client, functions=False)  # Redis < 7: the same code as scripts from now on
            return run(client, *calls)
        if missing:
            load_library(client)
            for i, r in zip(missing, _execute(client, [calls[i] for i in missing], functions=True), strict=True):
                results[i] = r
    else:
        results = _execute(client, calls, functions=False)
        missing = [i for i, r in enumerate(results) if isinstance(r, redis.exceptions.NoScriptError)]
        if missing:
            for src, _sha in _SCRIPTS.values():
                client.script_load(src)
            for i, r in zip(missing, _execute(client, [calls[i] for i in missing], functions=False), strict=True):
                results[i] = r
    for r in results:
        if isinstance(r, Exception):
            raise r
    return results


def uses_functions(client: Any) -> bool:
    """Whether calls on this client go as functions (FCALL): until Redis says it has none."""
    mode = getattr(client, "_governor_functions", None)
    return (not FORCE_SCRIPTS) if mode is None else mode


def _set_mode(client: Any, functions: bool) -> None:
    try:
        client._governor_functions = functions
    except AttributeError:
        pass  # (a client that takes no attributes asks again next time)


def load_library(client: Any) -> None:
    """FUNCTION LOAD REPLACE on the node (every primary of a Cluster): a master does it at
    start, and any caller when Redis says the function is not there."""
    client.function_load(LIBRARY_SOURCE, replace=True)


def prepare(client: Any) -> None:
    """A master at its start: the library loaded on the node (every primary) before any worker
    calls it, or, on a Redis without functions (< 7), script mode chosen."""
    if FORCE_SCRIPTS:
        return
    try:
        load_library(client)
    except redis.exceptions.ResponseError as exc:
        if "unknown command" not in str(exc).lower():
            raise
        _set_mode(client, functions=False)


def _no_function(r: Any) -> bool:
    return isinstance(r, redis.exceptions.ResponseError) and (
        "function not found" in str(r).lower() or _no_fcall(r))


def _no_fcall(r: Any) -> bool:
    text = str(r).lower()
    return isinstance(r, redis.exceptions.ResponseError) and "unknown command" in text and "fcall" in text


def _execute_atomic(client: redis.Redis, calls: Sequence[Call]) -> list[Any]:
    pipe = client.pipeline(transaction=True)
    if is_cluster(client):
        # a Cluster transaction holds commands of one slot only (SCRIPT LOAD has none): the
        # scripts go whole, so no NOSCRIPT can split the transaction either
        for c in calls:
            pipe.execute_command("EVAL", _SCRIPTS[c.script][0], len(c.keys), *c.keys, *c.args)
        return pipe.execute(raise_on_error=True)
    if uses_functions(client):
        # the library loaded first, in the transaction: no "function not found" can split it
        pipe.function_load(LIBRARY_SOURCE, replace=True)
        for c in calls:
            pipe.execute_command("FCALL", _FUNCTIONS[c.script], len(c.keys), *c.keys, *c.args)
        try:
            results = pipe.execute(raise_on_error=True)
        except redis.exceptions.ResponseError as exc:
            if not _no_fcall(exc) and "unknown command" not in str(exc).lower():
                raise
            _set_mode(client, functions=False)  # Redis < 7 (the transaction was refused whole)
            return _execute_atomic(client, calls)
        return results[len(results) - len(calls):]
    for name in dict.fromkeys(c.script for c in calls):
        pipe.script_load(_SCRIPTS[name][0])
    for c in calls:
        pipe.execute_command("EVALSHA", _SCRIPTS[c.script][1], len(c.keys), *c.keys, *c.args)
    results = pipe.execute(raise_on_error=True)
    return results[len(results) - len(calls):]


def _execute(client: redis.Redis, calls: Sequence[Call], functions: bool) -> list[Any]:
    if len(calls) == 1:
        c = calls[0]
        command = ("FCALL", _FUNCTIONS[c.script]) if functions else ("EVALSHA", _SCRIPTS[c.script][1])
        try:
            if is_cluster(client):
                return [client.execute_command(*command, len(c.keys), *c.keys, *c.args)]
            return [_direct(client, *command, len(c.keys), *c.keys, *c.args)]
        except redis.exceptions.ResponseError as exc:  # (NoScriptError is one)
            return [exc]
    pipe = client.pipeline(transaction=False)
    cluster = is_cluster(client)
    for c in calls:
        # execute_command: a Cluster pipeline refuses .evalsha; and there it is sent to the
        # node of its first key, named here: else redis-py asks a node (COMMAND GETKEYS) for
        # every script of every pipeline, one round trip each, before sending it
        route = {"target_nodes": client.get_node_from_key(c.keys[0])} if cluster else {}
        if functions:
            pipe.execute_command("FCALL", _FUNCTIONS[c.script], len(c.keys), *c.keys, *c.args, **route)
        else:
            pipe.execute_command("EVALSHA", _SCRIPTS[c.script][1], len(c.keys), *c.keys, *c.args, **route)
    return pipe.execute(raise_on_error=False)


def _direct(client: redis.Redis, *command: Any) -> Any:
    """One command on a connection of the client's pool, without redis-py's per-command
    machinery (retry wrapper, observability hooks, response callbacks: tens of microseconds,
    more than Redis takes to run a transition). A connection Redis closed is dropped and the
    command left to ``execute_command``, which reconnects and re-sends it as redis-py always
    does (every governor call is safe to re-send); a timeout is raised at once, as the
    caller's socket timeout promises (a second wait would hold a master's loop twice as long)."""
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_command(*command)
        reply = conn.read_response()
    except redis.exceptions.ResponseError:
        pool.release(conn)  # a whole reply, an error one: the connection is fine
        raise
    except redis.exceptions.TimeoutError:
        conn.disconnect()  # Redis is there and does not answer: no second wait (a master's clock runs on)
        pool.release(conn)
        raise
    except (redis.exceptions.ConnectionError, OSError):
        conn.disconnect()  # a pooled connection Redis closed (a restart): execute_command reconnects
        pool.release(conn)
        return client.execute_command(*command)
    except BaseException:
        conn.disconnect()  # (half read: not to be reused)
        pool.release(conn)
        raise
    pool.release(conn)
    if isinstance(reply, redis.exceptions.ResponseError):
        raise reply
    return reply


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
