"""docs/protocol.md, the wire contract for producers in any language, checked against the code
so that it cannot go stale silently:

* every function the library registers has a section, and no section names a function the
  library lacks;
* each section's layout block (its key count, keys and arguments, in the page's notation) is
  expanded and compared with the calls governor's own code builds (``QueueKeys``,
  ``FleetKeys``, ``settle_and_reserve``, ``flight``, and the real ``limit()`` and
  ``registry()`` calls as sent to a real Redis): the count, every key, every literal and every
  count argument;
* the partition test vectors match ``partition_of`` (and zlib's CRC-32);
* the example session is replayed with redis-cli against a real redis-server with the library
  loaded, and answers as the page shows (times aside).
"""

from __future__ import annotations

import inspect
import json
import re
import shutil
import subprocess
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis

from governor.config.schema import RateLimit
from governor.protocol import limits, scripts
from governor.protocol.client import Client
from governor.protocol.fleet import FleetKeys
from governor.protocol.keys import QueueKeys
from governor.protocol.library import LIBRARY
from governor.protocol.limits import bind, limit, rules_for
from governor.protocol.records import partition_of
from governor.protocol.scripts import LIBRARY_SOURCE, Call, flight, load_library, settle_and_reserve

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
P, Q = "pfx", "jobsq"
HANDLER = "myapp.tasks:send"


# -- reading the page -----------------------------------------------------------------------

def text() -> str:
    return DOC.read_text()


def sections() -> dict[str, str]:
    """Function name -> its section's text (from its ### heading to the next heading)."""
    out: dict[str, str] = {}
    parts = re.split(r"^(#{2,3} .*)$", text(), flags=re.M)
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        m = re.fullmatch(r"### (governor_v\d+_\w+)", heading.strip())
        if m:
            assert m.group(1) not in out, f"two sections for {m.group(1)}"
            out[m.group(1)] = body
    return out


def layout(body: str) -> dict[str, Any]:
    """The section's layout block: {'name', 'numkeys' (a formula), 'KEYS', 'ARGV': [alternatives]}."""
    blocks = re.findall(r"```layout\n(.*?)```", body, flags=re.S)
    assert len(blocks) == 1, f"expected one layout block, found {len(blocks)}"
    lines: list[list[str]] = []
    for line in blocks[0].splitlines():
        if not line.strip():
            continue
        if line[0].isspace():
            lines[-1][1] += " " + line.strip()
        else:
            word, _, rest = line.partition(" ")
            lines.append([word, rest.strip()])
    (head, first), *rest = lines
    assert head == "FCALL", f"a layout starts with FCALL, not {head}"
    name, _, numkeys = first.partition(" ")
    keys = [r for w, r in rest if w == "KEYS"]
    argv = [r for w, r in rest if w == "ARGV"]
    assert len(keys) == 1 and argv and len(keys) + len(argv) == len(rest), f"{name}: KEYS once, then ARGV"
    return {"name": name, "numkeys": numkeys, "KEYS": keys[0], "ARGV": argv}


def layouts() -> dict[str, dict[str, Any]]:
    return {name: layout(body) for name, body in sections().items()}


TOKEN = re.compile(r"\(|\)\*(\w+)|'[^']*'(?:\|'[^']*')*|[^\s()]+")


def expand(spec: str, b: dict[str, Any], all_layouts: dict[str, dict[str, Any]], part: str) -> list[str]:
    """The spec's items with every ( ... )*n repeated and every @fn.KEYS / @fn.ARGV[i..] spliced."""
    tokens = [(m.group(0), m.group(1)) for m in TOKEN.finditer(spec)]

    def seq(i: int) -> tuple[list[str], int, str | None]:
        items: list[str] = []
        while i < len(tokens):
            tok, var = tokens[i]
            if tok == "(":
                inner, i, count = seq(i + 1)
                assert count is not None, f"unclosed group in {spec!r}"
                items += inner * int(b[count])
                continue
            if var is not None:
                return items, i + 1, var
            m = re.fullmatch(r"@(\w+)\.(KEYS|ARGV)(?:\[(\d+)\.\.\])?", tok)
            if m:
                fn = b.get(m.group(1), m.group(1))
                other = all_layouts[f"{LIBRARY}_{fn}"]
                spliced = expand(other[m.group(2)] if m.group(2) == "KEYS" else other["ARGV"][0], b,
                                 all_layouts, m.group(2))
                items += spliced[int(m.group(3) or 1) - 1:]
            else:
                items.append(tok)
            i += 1
        return items, i, None

    items, _, dangling = seq(0)
    assert dangling is None, f"unopened group in {spec!r}"
    return items


def key_matches(pattern: str, key: str, b: dict[str, Any]) -> bool:
    if re.search(r"<[\w-]+-key>", pattern):
        return True  # a key named elsewhere (a rate limit's)
    home = f"{{{b['prefix']}:{b['queue']}}}"
    values = {"prefix": b["prefix"], "queue": b["queue"], "home": home, "lane": b.get("lane", home),
              "handler": b.get("handler", ""), "state": b.get("state", "")}
    concrete = re.sub(r"<(\w+)>", lambda m: values[m.group(1)], pattern)
    return concrete == key


def arg_matches(pattern: str, arg: Any, b: dict[str, Any]) -> bool:
    if pattern.startswith("'"):
        return str(arg) in re.findall(r"'([^']*)'", pattern)
    if pattern in b and isinstance(b[pattern], int):
        return str(arg) == str(b[pattern])  # a count the layout names (n, L, S, ...)
    return True


def numkeys(formula: str, b: dict[str, Any]) -> int:
    expr = re.sub(r"[A-Za-z]\w*", lambda m: str(int(b[m.group(0)])), formula)
    assert re.fullmatch(r"[\d\s+*]+", expr), f"not a key count formula: {formula!r}"
    return int(eval(expr))  # noqa: S307 - digits, + and * only (checked above)


# -- the calls governor's code builds ---------------------------------------------------------

class Recording(redis.Redis):
    """A real connection that keeps every call of governor's Lua it sends (FCALL, or EVALSHA
    in script mode), as a Call."""

    SCRIPTS = {sha: name for name, (_, sha) in scripts._SCRIPTS.items()}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[Call] = []

    def execute_command(self, *args: Any, **options: Any) -> Any:
        if args and args[0] in ("FCALL", "EVALSHA"):
            n = int(args[2])
            name = str(args[1])[len(LIBRARY) + 1:] if args[0] == "FCALL" else self.SCRIPTS[args[1]]
            self.sent.append(Call(name, args[3:3 + n], args[3 + n:]))
        return super().execute_command(*args, **options)


def tag(k: QueueKeys) -> str:
    return k.key("x")[:-2]


def cases(redis_port: int) -> dict[str, list[tuple[Call, dict[str, Any]]]]:
    """Function -> (a call as governor builds it, the layout's bindings for it)."""
    lane, part, home = QueueKeys(P, Q), QueueKeys(P, Q, 3), QueueKeys(P, Q)
    base = {"prefix": P, "queue": Q, "lane": tag(lane)}
    on_part = {**base, "lane": tag(part)}
    rules = rules_for(P, SimpleNamespace(name=Q, rate_limits=[RateLimit(limit=5, per=1.0)], limiters=["api"],
                                         global_concurrency=2),
                      {"api": [RateLimit(limit=10, per=60.0, algorithm="sliding_window")]})
    assert len(rules.limits) == 2
    reserve = lane.reserve("w1", "t1", 30000)
    ack = lane.ack("j1", "t1", "w1", 3600000, '{"ok":1}', 12)
    ack_runtimes = lane.ack("j1", "t1", "w1", 3600000, "", 12, "", True, (HANDLER, 100))
    fail = lane.fail("j1", "t1", "w1", {"error": "boom"}, "retry", 2000, "exception", 3)
    reserve_b = {"L": 0, "f": 0, "R": 11}
    job = ("j1", '{"handler":"m:f"}', '{"handler":"m:f"}', 0)

    client = Recording(port=redis_port)
    direct = scripts._direct  # (single calls skip execute_command: recorded through it here)
    scripts._direct = lambda c, *command: c.execute_command(*command)
    try:
        bind(client, P, {"api": [RateLimit(limit=1000, per=1.0), RateLimit(limit=5000, per=60.0)]})
        limit("api")
        Client(client, prefix=P).registry()
    finally:
        limits._binding = None  # (a worker's state: no other test should find it bound)
        scripts._direct = direct
    limit_call = [c for c in client.sent if c.script == "limit"]
    registry_call = [c for c in client.sent if c.script == "registry"]
    assert limit_call and registry_call, client.sent  # (sent again after "function not found": the last)
    fleet = FleetKeys(P)

    return {
        "enqueue": [(lane.enqueue([job, job]), {**base, "n": 2}), (part.enqueue([job]), {**on_part, "n": 1})],
        "hint": [(home.hint({1: 2, 3: 1}), {**base, "p": 2})],
        "reserve": [
            (lane.reserve("w1", "t1", 30000, rules), {**base, "L": 2, "f": 0}),
            (part.reserve("w1", "t1", 30000, partitions=8), {**on_part, "L": 0, "f": 1}),
            (part.reserve("w1", "t1", 30000, partitions=8, cluster=True), {**on_part, "L": 0, "f": 0}),
        ],
        "ack": [(ack, {**base, "r": 0}), (ack_runtimes, {**base, "r": 1, "handler": HANDLER})],
        "fail": [(fail, base),
                 (lane.fail("j1", "t1", "w1", None, "throttle", 750, "throttled", 3), base),
                 (lane.fail("j1", "t1", "w1", None, "requeue", 0, "shutdown", 3), base)],
        "settle_reserve": [
            (settle_and_reserve(ack, reserve), {**base, "settle": "ack", "r": 0, "S": 12, "A": 8, **reserve_b}),
            (settle_and_reserve(fail, reserve), {**base, "settle": "fail", "S": 12, "A": 8, **reserve_b}),
        ],
        "flight": [
            (flight([ack, ack], [("w1~0", "t1"), ("w1~1", "t2")], reserve),
             {**base, "settle": "ack", "r": 0, "S": 12, "A": 8, "n": 2, "k": 1, "m": 2, "g": 1, **reserve_b}),
            (flight([fail], [], None), {**base, "settle": "fail", "S": 12, "A": 8, "n": 1, "k": 1, "m": 0, "g": 0,
                                        **reserve_b}),
        ],
        "renew": [(lane.renew(30000, ["w1", "w2"]), {**base, "w": 2})],
        "tick": [(lane.tick(3600000), base)],
        "partitions": [(home.partition_leases("m1", 30000, 8, 0), base),
                       (home.partition_leases("m1", 30000, 8, 2, release=True), base)],
        "handlers": [(lane.learn([HANDLER], 95, 1.5, 100, 60000, 20, 3, 600000), {**base, "h": 1, "handler": HANDLER}),
                     (lane.learn([], 95, 1, 0, 0, 0, 1, 1), {**base, "h": 0})],
        "censor": [(lane.censor(HANDLER, 5000, 100, "j1"), {**base, "handler": HANDLER})],
        "limit": [(limit_call[-1], {**base, "L": 2})],
        "fleet": [(fleet.beat("m1", 30000, {"host": "h"}), base), (fleet.beat("m1", 30000, None), base),
                  (fleet.leave("m1"), base), (fleet.read(), base)],
        "jobs": [(lane.list_jobs("waiting", 0, 10, 100), {**base, "w": 1, "state": "waiting"}),
                 (part.list_jobs("dead", 5, 10, 100, HANDLER, "x", "ids"), {**on_part, "w": 0, "state": "dead"})],
        "registry": [(registry_call[-1], base)],
        "retry": [(lane.retry(["a", "b"], "any"), {**base, "i": 2}), (lane.retry(["a"]), {**base, "i": 1})],
        "cancel": [(lane.cancel(["a"]), {**base, "i": 1})],
        "purge": [(lane.purge("dead", 500), {**base, "i": 0, "state": "dead"}),
                  (part.purge("waiting", 1, ["a", "b"]), {**on_part, "i": 2, "state": "waiting"})],
    }


def library_functions() -> set[str]:
    return set(re.findall(r"function_name='(\w+)'", LIBRARY_SOURCE))


# -- the tests --------------------------------------------------------------------------------

def test_every_function_of_the_library_has_a_section_and_nothing_else_does():
    documented, registered = set(sections()), library_functions()
    assert registered, "no function found in the library's source"
    assert documented == registered, (f"undocumented: {sorted(registered - documented)}; "
                                      f"documented but not in the library: {sorted(documented - registered)}")
    for name, body in sections().items():
        assert layout(body)["name"] == name, f"the section {name} shows the layout of another function"


def test_each_layout_names_the_keys_and_arguments_governor_sends(redis_server):
    all_layouts = layouts()
    built = cases(redis_server.port)
    assert {f"{LIBRARY}_{n}" for n in built} == library_functions(), "a function without a case here"
    for script, calls in built.items():
        lay = all_layouts[f"{LIBRARY}_{script}"]
        for call, b in calls:
            where = f"{lay['name']} ({b})"
            assert call.script == script, where
            keys = expand(lay["KEYS"], b, all_layouts, "KEYS")
            assert numkeys(lay["numkeys"], b) == len(keys) == len(call.keys), (
                f"{where}: the page says {lay['numkeys']} keys ({len(keys)} listed), governor sends "
                f"{len(call.keys)}: {list(call.keys)}")
            for pattern, key in zip(keys, call.keys, strict=True):
                assert key_matches(pattern, key, b), f"{where}: key {pattern} on the page, {key} sent"
            tried = []
            for spec in lay["ARGV"]:
                argv = expand(spec, b, all_layouts, "ARGV")
                tried.append(argv)
                if len(argv) == len(call.args) and all(arg_matches(p, a, b)
                                                       for p, a in zip(argv, call.args, strict=True)):
                    break
            else:
                pytest.fail(f"{where}: governor sends {len(call.args)} arguments {list(call.args)}; "
                            f"the page's layouts give {tried}")


def vectors() -> list[list[str]]:
    block = text().split("<!-- partition-vectors", 1)[1].split("\n\n", 1)[0]
    rows = [[c.strip().strip("`") for c in line.strip().strip("|").split("|")]
            for line in block.splitlines()[1:] if line.startswith("|")]
    return rows


def test_the_partition_function_on_the_page_is_governor_s():
    """The page gives partition_of's code exactly as the source has it (its docstring aside)."""
    source = inspect.getsource(partition_of)
    shown = text().split("```python\ndef partition_of", 1)[1].split("```", 1)[0]
    code = [line for line in ("def partition_of" + shown).splitlines() if line.strip()]
    assert code[0] in source and code[-1] in source and len(code) == 2, code
    assert code[-1].strip() == [line.strip() for line in source.splitlines() if line.strip()][-1]


def test_the_partition_test_vectors_are_what_partition_of_computes():
    header, _, *rows = vectors()
    counts = [int(h.removeprefix("n=")) for h in header[3:]]
    assert len(rows) >= 8 and 1 in counts and 1024 in counts
    for key, crc_hex, crc, *parts in rows:
        assert zlib.crc32(key.encode()) == int(crc) == int(crc_hex, 16), key
        assert [partition_of(key, n) for n in counts] == [int(p) for p in parts], key
    assert any(r[0] == "123456789" and r[1] == "cbf43926" for r in rows), "CRC-32's check value is shown"


# -- the example session ---------------------------------------------------------------------

def session() -> list[tuple[str, list[str]]]:
    block = text().split("<!-- example-session", 1)[1]
    block = block.split("```console\n", 1)[1].split("```", 1)[0]
    steps: list[tuple[str, list[str]]] = []
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        assert lines[i].startswith("$ "), f"expected a command: {lines[i]!r}"
        command = lines[i][2:]
        while command.endswith("\\"):
            i += 1
            command = command[:-1] + " " + lines[i].strip()
        i += 1
        output = []
        while i < len(lines) and not lines[i].startswith("$ "):
            output.append(lines[i])
            i += 1
        steps.append((command, output))
    return steps


def normalised(line: str) -> Any:
    """A line of redis-cli's output with times (13-digit ms) made equal, and JSON decoded, so
    neither the clock nor cjson's key order matters."""
    line = re.sub(r"\b1\d{12}\b", "0", line)
    m = re.fullmatch(r'(\d+\) )?"(.*)"', line)
    if m:
        inner = m.group(2).encode().decode("unicode_escape")
        try:
            return m.group(1), json.loads(inner)
        except ValueError:
            return m.group(1), inner
    return line


def test_the_example_session_answers_as_shown(private_redis):
    cli = shutil.which("redis-cli")
    if not cli:
        pytest.fail("redis-cli is not installed (apt-get install -y redis-tools)")
    load_library(redis.Redis(port=private_redis.port))
    steps = session()
    assert any("FCALL governor_v1_enqueue" in c for c, _ in steps)
    for command, expected in steps:
        assert command.startswith("redis-cli "), command
        run = subprocess.run(["bash", "-c", f"{cli} -p {private_redis.port} --no-raw {command[len('redis-cli '):]}"],
                             capture_output=True, text=True, timeout=30)
        got = (run.stdout + run.stderr).splitlines()
        assert [normalised(x) for x in got] == [normalised(x) for x in expected], (
            f"$ {command}\nthe page shows:\n" + "\n".join(expected) + "\nredis-cli answered:\n" + "\n".join(got))
