"""The wire between Python and the Lua: each script declares its keys and arguments at its top,
and this checks both sides against the declaration, without a Redis.

A declaration is one ``-- keys:`` line and one or more ``-- args:`` lines (several: variants
chosen by a literal, ``op=beat``), continued on lines indented under the first name. Tokens:
``name`` (one value), ``name?`` or ``(a b)?`` (optional, at the end), ``name*`` or ``(a b)*``
(a variable tail of any length), ``name*ref`` or ``(a b)*ref`` (repeated as many times as the
argument ``ref`` says, or once per value of a tail ``ref``), ``name*sum(ref)`` (as many as the
values of the tail ``ref`` add up to). Keys may refer to arguments.

Checked: (a) each script binds the names before its first variable tail, in their order, at its
top (a transition: at the top of its function), ``local waiting, delayed = KEYS[1], KEYS[2]``,
and reads ``KEYS[n]``/``ARGV[n]`` by a literal position nowhere else; (b) every place in
governor that builds a ``Call`` passes keys and arguments that fit its script's declaration
(built here with sample values), the keys of a queue in the declared order (each is the
``QueueKeys`` key its name says), and the composites' (settle_reserve, flight) parts fit the
declarations of the transitions they run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from governor.protocol import client_base, keys, library, limits, scripts
from governor.protocol.fleet import FleetKeys
from governor.protocol.keys import QueueKeys
from governor.protocol.limits import Limit, Rules
from governor.protocol.scripts import Call

LUA = resources.files("governor.protocol") / "lua"
SCRIPTS = sorted(scripts._SCRIPTS)


# -- declarations ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Name:
    name: str
    literal: str | None = None


@dataclass(frozen=True)
class Opt:
    items: tuple[Any, ...]


@dataclass(frozen=True)
class Rep:
    items: tuple[Any, ...]
    ref: str | None = None  # None: a variable tail of any length
    summed: bool = False


_SUFFIX = re.compile(r"(\?|\*(?:sum\((\w+)\)|(\w+))?)?")


def _parse(text: str) -> tuple[Any, ...]:
    items, pos = _parse_items(text, 0)
    assert pos == len(text), f"unexpected ')' in {text!r}"
    return items


def _parse_items(text: str, pos: int) -> tuple[tuple[Any, ...], int]:
    items: list[Any] = []
    while pos < len(text):
        if text[pos].isspace():
            pos += 1
        elif text[pos] == ")":
            return tuple(items), pos
        elif text[pos] == "(":
            group, pos = _parse_items(text, pos + 1)
            assert text[pos] == ")", text
            item, pos = _suffixed(group, text, pos + 1)
            assert not isinstance(item, tuple), f"a group needs ?, * or *ref: {text!r}"
            items.append(item)
        else:
            m = re.compile(r"(\w+)(?:=(\w+))?").match(text, pos)
            assert m, f"bad token at {text[pos:]!r}"
            item, pos = _suffixed((Name(m.group(1), m.group(2)),), text, m.end())
            items.extend(item if isinstance(item, tuple) else (item,))
    return tuple(items), pos


def _suffixed(group: tuple[Any, ...], text: str, pos: int) -> tuple[Any, int]:
    m = _SUFFIX.match(text, pos)
    suffix = m.group(1) or ""
    if suffix == "?":
        return Opt(group), m.end()
    if suffix.startswith("*"):
        return Rep(group, m.group(2) or m.group(3), summed=bool(m.group(2))), m.end()
    return group, m.end()


@dataclass
class Declaration:
    keys: tuple[Any, ...]
    args: list[tuple[Any, ...]]  # the variants


def header(source: str) -> list[str]:
    out = []
    for line in source.splitlines():
        if not line.startswith("--"):
            break
        out.append(line)
    return out


def declaration(name: str) -> Declaration:
    lines = header((LUA / f"{name}.lua").read_text())
    found: dict[str, list[str]] = {"keys": [], "args": []}
    current: list[str] | None = None
    for line in lines:
        m = re.match(r"-- (keys|args): (.*)$", line)
        if m:
            found[m.group(1)].append(m.group(2))
            current = found[m.group(1)]
        elif current is not None and re.match(r"--\s{6,}\S", line):
            current[-1] += " " + line[2:].strip()
        else:
            current = None
    assert len(found["keys"]) == 1, f"{name}.lua: one '-- keys:' line in its header"
    assert found["args"], f"{name}.lua: an '-- args:' line in its header"
    return Declaration(_parse(found["keys"][0]), [_parse(a) for a in found["args"]])


# -- matching values against a declaration -----------------------------------------------------

class Mismatch(AssertionError):
    pass


def _width(items: tuple[Any, ...]) -> int | None:
    """Values a fixed group takes (None: variable)."""
    total = 0
    for it in items:
        if isinstance(it, Name):
            total += 1
        else:
            return None
    return total


def _min_width(items: tuple[Any, ...]) -> int:
    return sum(1 for it in items if isinstance(it, Name))


def _count(rep: Rep, env: dict[str, Any]) -> int:
    if rep.ref not in env:
        raise Mismatch(f"{rep.ref!r} is not an earlier argument")
    v = env[rep.ref]
    if isinstance(v, list):
        return sum(int(x) for x in v) if rep.summed else len(v)
    return int(v)


def match(items: tuple[Any, ...], values: list[Any], env: dict[str, Any]) -> dict[str, Any]:
    """The names bound to ``values`` (a repeated name: its list of values; a repeated group:
    ``reps[names]``, a list of each round's bindings), all values used, else Mismatch."""
    out, pos = _match(items, values, 0, env)
    if pos != len(values):
        raise Mismatch(f"{len(values) - pos} values too many: {values[pos:]!r}")
    return out


def _match(items: tuple[Any, ...], values: list[Any], pos: int, env: dict[str, Any]) -> tuple[dict[str, Any], int]:
    out: dict[str, Any] = {"reps": {}}
    env = {**env}
    for i, it in enumerate(items):
        following = _min_width(items[i + 1:])
        if isinstance(it, Name):
            if pos >= len(values):
                raise Mismatch(f"no value for {it.name!r}")
            if it.literal is not None and str(values[pos]) != it.literal:
                raise Mismatch(f"{it.name!r} is {values[pos]!r}, not {it.literal!r}")
            out[it.name] = env[it.name] = values[pos]
            pos += 1
        elif isinstance(it, Opt):
            width = _width(it.items)
            assert width is not None, "an optional group of fixed width"
            if len(values) - pos >= width + following:
                got, pos = _match(it.items, values, pos, env)
                got.pop("reps")
                out.update(got)
                env.update(got)
        else:
            rounds = []
            if it.ref is None:
                width = _width(it.items)
                assert width, "a variable tail of fixed width"
                left = len(values) - pos - following
                if left < 0 or left % width:
                    raise Mismatch(f"{left} values for groups of {width}")
                n = left // width
            else:
                n = _count(it, env)
            for _ in range(n):
                got, pos = _match(it.items, values, pos, env)
                rounds.append(got)
            names = [x.name for x in it.items if isinstance(x, Name)]
            for name in names:
                out[name] = env[name] = [r[name] for r in rounds]
            out["reps"][tuple(names)] = rounds
    return out, pos


def check_call(call: Call) -> tuple[dict[str, Any], dict[str, Any]]:
    """(key bindings, argument bindings) of a call that fits its script's declaration."""
    decl = declaration(call.script)
    errors = []
    for variant in decl.args:
        try:
            args = match(variant, list(call.args), {})
        except Mismatch as exc:
            errors.append(str(exc))
            continue
        try:
            return match(decl.keys, list(call.keys), args), args
        except Mismatch as exc:
            raise Mismatch(f"{call.script}: its {len(call.keys)} keys do not fit '{decl.keys}': {exc}") from None
    raise Mismatch(f"{call.script}: its {len(call.args)} arguments fit no declared variant: {errors}")


def test_matcher_refuses_what_does_not_fit() -> None:
    """The checks below are only as good as the matcher: a count off by one fails it."""
    k = QueueKeys("p", "q")
    good = k.tick(1000)
    check_call(good)
    for bad in (good._replace(keys=good.keys[:-1]), good._replace(args=(1, 2)),
                k.cancel(["a"])._replace(keys=k.cancel(["a"]).keys[:7])):
        with pytest.raises(Mismatch):
            check_call(bad)
    enq = k.enqueue([("a", "x", "{}", 0), ("b", "y", "{}", 0)])
    with pytest.raises(Mismatch):
        check_call(enq._replace(args=(3, *enq.args[1:])))  # n says 3 jobs, 2 follow
    res = k.reserve("w", "t", 1000, _rules())
    with pytest.raises(Mismatch):
        check_call(res._replace(keys=res.keys[:-1]))  # a limit's key missing
    ack = k.ack("j", "t", "w", 1000, "", 5, runtimes=("h", 10))
    with pytest.raises(Mismatch):
        check_call(ack._replace(args=ack.args[:-1]))  # half of the optional pair


# -- (a) the Lua binds the declared names ------------------------------------------------------

_LITERAL = re.compile(r"\b(KEYS|ARGV)\[(\d+)\]")
_TRANSITION = re.compile(r"^local function (\w+)\(KEYS, ARGV")


def _code(line: str) -> str:
    """A line without its comment (no script holds '--' in a string)."""
    return line.split("--", 1)[0].rstrip()


def body(name: str) -> list[str]:
    """The script's code after its header; a transition's: inside its function."""
    lines = (LUA / f"{name}.lua").read_text().splitlines()
    for i, line in enumerate(lines):
        m = _TRANSITION.match(line)
        if m and m.group(1) == name:
            return lines[i + 1:]
    return lines[len(header("\n".join(lines))):]


def statements(lines: list[str]) -> list[tuple[int, str]]:
    """(first line's index, text) of each statement: a line that ends in '=' or ',' goes on."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for i, line in enumerate(lines):
        code = _code(line)
        if not code.strip():
            continue
        if pending:
            pending = (pending[0], pending[1] + " " + code.strip())
        else:
            pending = (i, code.strip())
        if not code.endswith(("=", ",")):
            out.append(pending)
            pending = None
    return out


def _split_top(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    parts.append(cur.strip())
    return parts


def bindings(text: str) -> list[tuple[str, str, int]] | None:
    """``local a, b = X[1], f(Y[2])`` -> [(a, X, 1), (b, Y, 2)]; None for any other statement."""
    m = re.fullmatch(r"local\s+([\w\s,]+?)\s*=\s*(.+)", text)
    if not m:
        return None
    names = [n.strip() for n in m.group(1).split(",")]
    exprs = _split_top(m.group(2))
    if len(names) != len(exprs):
        return None
    out = []
    for n, e in zip(names, exprs, strict=True):
        refs = _LITERAL.findall(e)
        if len(refs) != 1:
            return None
        out.append((n, refs[0][0], int(refs[0][1])))
    return out


def fixed_prefix(items: tuple[Any, ...]) -> list[str]:
    """The names at fixed positions: those before the first repeated part."""
    out: list[str] = []
    for it in items:
        if isinstance(it, Name):
            out.append(it.name)
        elif isinstance(it, Opt):
            out.extend(fixed_prefix(it.items))
        else:
            break
    return out


def after_tail(items: tuple[Any, ...]) -> list[str]:
    """The names after the first repeated part (their places are computed)."""
    for i, it in enumerate(items):
        if isinstance(it, Rep):
            return [n for x in items[i + 1:] for n in fixed_prefix((x,))]
    return []


@pytest.mark.parametrize("name", SCRIPTS)
def test_each_script_names_its_keys_and_arguments(name: str) -> None:
    decl = declaration(name)
    code = body(name)
    stmts = statements(code)
    leading: list[tuple[str, str, int]] = []
    for _, text in stmts:
        if not text.startswith("local "):
            break
        leading.extend(bindings(text) or [])
    anywhere = [b for _, text in stmts for b in (bindings(text) or [])]
    common = fixed_prefix(decl.args[0])
    for variant in decl.args[1:]:  # variants (fleet.lua): what they share is bound at the top
        shared = fixed_prefix(variant)
        common = [a for a, b in zip(common, shared, strict=False) if a == b]
    wanted = {"KEYS": fixed_prefix(decl.keys), "ARGV": common}
    for table, names in wanted.items():
        bound = [(n, i) for n, t, i in leading if t == table]
        assert bound == [(n, i + 1) for i, n in enumerate(names)], (
            f"{name}.lua: its first lines should bind {table} as declared, "
            f"{', '.join(names) or 'nothing'}; they bind {bound}")
    for variant in decl.args:
        names = fixed_prefix(variant)
        for i, n in enumerate(names):
            assert (n, "ARGV", i + 1) in anywhere, f"{name}.lua: {n} is not bound to ARGV[{i + 1}]"
    text = "\n".join(_code(line) for line in code)
    for n in after_tail(decl.keys) + [n for v in decl.args for n in after_tail(v)]:
        assert re.search(rf"\blocal\s+[\w\s,]*\b{n}\b[\w\s,]*=", text), f"{name}.lua: {n} is declared, never named"


@pytest.mark.parametrize("name", SCRIPTS)
def test_no_script_reads_keys_or_arguments_by_a_literal_position(name: str) -> None:
    """Past the names at its top, a script reads a value by its name (a variable tail by index
    arithmetic: ``ARGV[b + 1]``): a literal position only ever appears where a declared name
    is bound to it, at that name's declared place."""
    decl = declaration(name)
    positions: dict[tuple[str, int], set[str]] = {("KEYS", i + 1): {n} for i, n in enumerate(fixed_prefix(decl.keys))}
    for variant in decl.args:
        for i, n in enumerate(fixed_prefix(variant)):
            positions.setdefault(("ARGV", i + 1), set()).add(n)
    for index, text in statements(body(name)):
        refs = _LITERAL.findall(text)
        if not refs:
            continue
        bound = bindings(text)
        assert bound is not None, f"{name}.lua, line {index + 1} of its body: reads {refs} by position: {text}"
        for n, table, i in bound:
            assert n in positions.get((table, i), ()), f"{name}.lua: {n} = {table}[{i}], declared as {positions.get((table, i))}"


def test_every_script_has_a_declaration_and_every_file_a_script() -> None:
    files = {p.name[:-4] for p in LUA.iterdir() if p.name.endswith(".lua")}
    assert files == set(scripts._SCRIPTS)
    prelude = {p.name[:-4] for p in (LUA / "lib").iterdir() if p.name.endswith(".lua")}
    assert prelude == set(library.PRELUDE)
    for name in files:
        declaration(name)


# -- (b) the Python call sites fit the declarations --------------------------------------------

def _rules(n: int = 2, gc: int = 3) -> Rules:
    lims = tuple(Limit(f"{{p:q}}:rate:token_bucket:{i}", "token_bucket", 5, 1000, 2) for i in range(n))
    return Rules(global_concurrency=gc, limits=lims)


def _queue_keys(k: QueueKeys, handler: str = "h", state: str = "waiting") -> dict[str, Any]:
    """Each declared key name of a queue's scripts: the key QueueKeys gives it."""
    home = k.home()
    return {
        "waiting": k.waiting, "delayed": k.delayed, "active": k.active, "dead": k.dead, "done": k.done,
        "records": k.meta, "data": k.data, "leases": k.leases, "wake_list": k.wake, "stats": k.stats,
        "unique": k.unique, "heads": k.heads, "key_lists": k.key_lists, "queued": k.queued,
        "seq": k.key("seq"), "partitions": k.key("partitions"), "fence": k.key("fence"), "paused": k.paused,
        "tickets": k.tickets, "handler_counts": k.handler_counts, "runtimes": k.runtimes(handler),
        "kills": k.adaptive_kills(handler), "adaptive": k.adaptive, "queue_fence": home.key("fence"),
        "state_set": k.state_key(state), "holders": home.key("holders"), "masters": home.key("masters"),
        "hint_lists": home.key("hint:"), "touched": home.key("touched:"),
    }


def _assert_keys(bound: dict[str, Any], expected: dict[str, Any], script: str) -> None:
    for name, value in bound.items():
        if name in expected:
            assert value == expected[name], f"{script}: the key named {name} is {value!r}, not {expected[name]!r}"


LANES = [QueueKeys("p", "q"), QueueKeys("p", "q", 3)]


def queue_calls(k: QueueKeys) -> list[tuple[Call, dict[str, Any]]]:
    """Every QueueKeys builder, with sample values, and the keys each name should be."""
    q = _queue_keys(k)
    out: list[tuple[Call, dict[str, Any]]] = [
        (k.enqueue([("a", "payload", '{"priority": 5}', 0)]), q),
        (k.enqueue([("a", "x", "{}", 0), ("b", "y", "{}", 10), ("c", "z", "{}", 0)]), q),
        (k.reserve("w", "t", 30000), q),
        (k.reserve("w", "t", 30000, _rules()), q),
        (k.reserve("w", "t", 30000, _rules(0, 0)), q),
        (k.ack("j", "t", "w", 1000, '{"r": 1}', 12), q),
        (k.ack("j", "t", "w", 1000, "", 12, "too large", wake=True, runtimes=("h", 100)), q),
        (k.fail("j", "t", "w", {"error": "boom"}, "retry", 500, "exception", 3), q),
        (k.fail("j", "t", "w", None, "requeue", 0, "stopped", 3), q),
        (k.retry(["a", "b"]), q), (k.retry([], "check"), q),
        (k.cancel(["a"]), q), (k.cancel([]), q),
        (k.censor("h", 5000, 100, "j"), q),
        (k.learn([], 95, 2.0, 100, 60000, 20, 3, 600000), {**q, "runtimes": [], "kills": []}),
        (k.learn(["h", "i"], 95, 2.0, 100, 60000, 20, 3, 600000),
         {**q, "runtimes": [k.runtimes("h"), k.runtimes("i")], "kills": [k.adaptive_kills(h) for h in "hi"]}),
        (k.tick(86400000), q),
        (k.renew(30000, []), q), (k.renew(30000, ["w1", "w2"]), q),
        (k.partition_leases("m", 10000, 8, 0), q), (k.partition_leases("m", 10000, 8, 2, release=True), q),
        (k.hint({}), q), (k.hint({0: 2, 5: 1}), q),
    ]
    if k.partition is not None:
        out.append((k.reserve("w", "t", 30000, _rules(), partitions=8), q))
        out.append((k.reserve("w", "t", 30000, _rules(1), partitions=8, cluster=True), q))
    for state in keys.JOB_STATES:
        qs = _queue_keys(k, state=state)
        out.append((k.list_jobs(state, 0, 50, 1000, "h", "text", "record"), qs))
        if state != "active":
            out.append((k.purge(state, 100), qs))
            out.append((k.purge(state, 100, ["a", "b"]), qs))
    return out


@pytest.mark.parametrize("lane", LANES, ids=["queue", "partition"])
def test_queue_keys_calls_fit_their_scripts(lane: QueueKeys) -> None:
    for call, expected in queue_calls(lane):
        bound, _ = check_call(call)
        _assert_keys(bound, expected, call.script)
    # the rate limits' keys go where the declaration puts them
    bound, args = check_call(lane.reserve("w", "t", 30000, _rules(2)))
    assert bound["limit_key"] == _rules(2).keys() and args["n_limits"] == 2
    assert ("queue_fence" in bound) == (lane.partition is not None)  # (a partition's, on one Redis)
    if lane.partition is not None:
        assert "queue_fence" not in check_call(lane.reserve("w", "t", 1, _rules(1), partitions=8, cluster=True))[0]
        bound, args = check_call(lane.reserve("w", "t", 30000, _rules(2), partitions=8))
        assert bound["queue_fence"] == lane.home().key("fence")
        assert (args["partition"], args["partitions"]) == (3, 8)


def test_fleet_calls_fit_fleet_lua() -> None:
    fk = FleetKeys("p")
    for call in (fk.beat("m", 10000, {"a": 1}), fk.beat("m", 10000, None), fk.leave("m"), fk.read(), fk.read(5)):
        bound, args = check_call(call)
        assert bound == {"reps": {}, "records": fk.records, "alive": fk.alive}
    assert check_call(fk.read(7))[1]["limit"] == 7
    with pytest.raises(Mismatch):
        check_call(Call("fleet", (fk.records, fk.alive), ("beat", "m", 10000)))


def test_limit_call_fits_limit_lua(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Call] = []
    monkeypatch.setattr(limits, "run", lambda client, *c, **kw: calls.extend(c) or [0])
    specs = [SimpleNamespace(algorithm="token_bucket", limit=5, per=1.0, burst=2),
             SimpleNamespace(algorithm="sliding_window", limit=10, per=60.0, burst=1)]
    monkeypatch.setattr(limits, "_binding", (object(), "p", {"api": specs, "one": specs[:1]}))
    limits.limit("api")
    limits.limit("one")
    for call, n in zip(calls, (2, 1), strict=True):
        bound, args = check_call(call)
        assert args["n_limits"] == n and len(bound["limit_key"]) == n and args["member"] == call.args[-1]


def test_registry_call_fits_registry_lua(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Call] = []
    monkeypatch.setattr(client_base, "run", lambda client, *c, **kw: calls.extend(c) or [[b"0", 0]])
    fake = SimpleNamespace(prefix="p", redis=SimpleNamespace(memory_usage=lambda *a, **kw: None))
    client_base.ClientBase.registry(fake, limit=10)
    assert len(calls) == 1
    bound, args = check_call(calls[0])
    assert bound["registry"] == "p:queues" and args["max_bytes"] == client_base.MAX_NAME_BYTES


def _check_settle(settle: str, skeys: list[Any], sargs: list[Any]) -> None:
    assert settle in ("ack", "fail")
    check_call(Call(settle, skeys, sargs))


@pytest.mark.parametrize("lane", LANES, ids=["queue", "partition"])
def test_settle_reserve_frames_a_settle_and_a_reserve(lane: QueueKeys) -> None:
    reserves = [lane.reserve("w", "t2", 30000), lane.reserve("w", "t2", 30000, _rules())]
    if lane.partition is not None:
        reserves.append(lane.reserve("w", "t2", 30000, _rules(), partitions=8))
    settles = [lane.ack("j", "t", "w", 1000, "", 5), lane.ack("j", "t", "w", 1000, "", 5, runtimes=("h", 9)),
               lane.fail("j", "t", "w", {"error": "x"}, "retry", 100, "exception", 3)]
    for settle in settles:
        for reserve in reserves:
            call = scripts.settle_and_reserve(settle, reserve)
            bound, args = check_call(call)
            _check_settle(args["settle"], bound["settle_key"], args["settle_arg"])
            assert (args["settle"], bound["settle_key"], args["settle_arg"]) == (
                settle.script, list(settle.keys), list(settle.args))
            assert check_call(Call("reserve", bound["reserve_key"], args["reserve_arg"]))
            assert (bound["reserve_key"], args["reserve_arg"]) == (list(reserve.keys), list(reserve.args))


@pytest.mark.parametrize("lane", LANES, ids=["queue", "partition"])
def test_flight_frames_its_settles_and_reserves(lane: QueueKeys) -> None:
    settles = [lane.ack("a", "t1", "w1", 1000, "", 5, runtimes=("h", 9)),
               lane.ack("b", "t2", "w2", 1000, "", 5, runtimes=("i", 9)),
               lane.ack("c", "t3", "w3", 1000, "", 5, runtimes=("h", 9)),
               lane.fail("d", "t4", "w4", None, "requeue", 0, "stopped", 3)]
    for n_settles, slots, reserve in ((4, [("w1", "n1"), ("w2", "n2")], lane.reserve("w", "t", 30000, _rules())),
                                      (0, [("w1", "n1")], lane.reserve("w", "t", 30000)),
                                      (2, [], None)):
        call = scripts.flight(settles[:n_settles], slots, reserve)
        bound, args = check_call(call)
        sets, at = [], 0
        for size in args["set_size"]:
            sets.append(bound["settle_key"][at:at + int(size)])
            at += int(size)
        rounds = args["reps"][("settle", "set", "na")]
        assert len(rounds) == n_settles
        for r, settle in zip(rounds, settles, strict=False):
            _check_settle(r["settle"], sets[int(r["set"]) - 1], r["settle_arg"])
            assert (sets[int(r["set"]) - 1], r["settle_arg"]) == (list(settle.keys), list(settle.args))
        assert args["m"] == len(slots)
        for worker, token in zip(args["worker"], args["token"], strict=True):
            check_call(Call("reserve", bound["reserve_key"], [worker, token, *args["reserve_arg"]]))


def test_every_call_site_is_checked_here() -> None:
    """A new ``Call("<script>", ...)`` anywhere in governor must be added to the checks above."""
    root = Path(scripts.__file__).resolve().parents[1]
    found = set()
    for path in root.rglob("*.py"):
        for m in re.finditer(r"\bCall\(\s*\"(\w+)\"", path.read_text()):
            found.add((path.relative_to(root.parent).as_posix(), m.group(1)))
    assert found == {
        ("governor/protocol/keys.py", s) for s in (
            "enqueue", "reserve", "ack", "jobs", "retry", "cancel", "purge", "censor", "handlers", "fail",
            "tick", "renew", "partitions", "hint")
    } | {
        ("governor/protocol/fleet.py", "fleet"), ("governor/protocol/limits.py", "limit"),
        ("governor/protocol/client_base.py", "registry"), ("governor/protocol/scripts.py", "settle_reserve"),
        ("governor/protocol/scripts.py", "flight"),
    }


def test_python_positions_agree_with_the_declarations() -> None:
    """The few places Python reads or edits a call by position."""
    assert fixed_prefix(declaration("ack").args[0]).index("wake_waiter") == keys.ACK_WAKE
    reserve = declaration("reserve")
    assert len(fixed_prefix(reserve.keys)) == scripts.RESERVE_LANE_KEYS
    assert fixed_prefix(reserve.args[0])[:2] == ["worker", "token"]  # flight() replaces them per slot
    fail = fixed_prefix(declaration("fail").args[0])
    assert (fail.index("id"), fail.index("error_json"), fail.index("reason")) == (0, 3, 6)  # worker.py
