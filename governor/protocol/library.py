"""governor's Lua as one Redis Function library (Redis >= 7): ``FUNCTION LOAD`` once per
node, then ``FCALL`` for every call (the read-only functions are flagged so, for FCALL_RO).

The library is built from the same files as the scripts (``lua/``): the shared prelude (the
files of ``lua/lib/``, ``PRELUDE``) and the transitions that others compose (ack, fail,
reserve) once at the top, then each script's body as a function of its keys and arguments,
registered under a name that carries the protocol version (``governor_v<N>_<script>``). A
script pays for its prelude on every EVALSHA (the whole text is compiled and the prelude's
definitions run again); a function's prelude ran once, when the library was loaded. Two
governor versions whose protocols differ load two libraries side by side (a rolling upgrade);
two builds of one protocol version replace each other's library, which is safe because a
protocol version names one wire behaviour (docs/protocol.md).
"""

from __future__ import annotations

from importlib import resources

PROTOCOL = 1  # the wire protocol's version: bump it with any change a producer or worker can see
LIBRARY = f"governor_v{PROTOCOL}"
TRANSITIONS = ("ack", "fail", "reserve")  # defined once at the library's top, shared by the composites
READ_ONLY = ("jobs", "registry")  # flagged no-writes (FCALL_RO may call them, on a replica too)
# The shared prelude: lua/lib/<name>.lua in this order (each file uses only what those before it
# define), before every script and at the top of the library.
PRELUDE = ("clock", "records", "leases", "schedule", "limits", "ordering")


def prelude() -> str:
    """The shared prelude's text: the files of ``lua/lib/`` in ``PRELUDE``'s order."""
    pkg = resources.files("governor.protocol") / "lua" / "lib"
    return "\n".join((pkg / f"{name}.lua").read_text() for name in PRELUDE)


def function_name(script: str) -> str:
    """The function a script is registered as: the protocol's version in its name."""
    return f"{LIBRARY}_{script}"


def build(scripts: dict[str, str]) -> str:
    """The library's source from the scripts' own texts (name -> body, without the prelude):
    the prelude and the shared transitions at the top, each script a registered function."""
    pkg = resources.files("governor.protocol") / "lua"
    parts = [f"#!lua name={LIBRARY}", prelude()]
    parts.extend((pkg / f"{name}.lua").read_text() for name in TRANSITIONS)
    # the prelude caches Redis's clock per run: a function's run starts with no cached time
    parts.append("local function entry(fn)\n  return function(KEYS, ARGV)\n    now_cached = nil\n"
                 "    return fn(KEYS, ARGV)\n  end\nend\n")
    for name, body in scripts.items():
        if name in TRANSITIONS:
            body = f"return {name}(KEYS, ARGV)"
        flags = "{'no-writes'}" if name in READ_ONLY else "{}"
        parts.append(f"redis.register_function{{function_name='{function_name(name)}', flags={flags},\n"
                     f"  callback=entry(function(KEYS, ARGV)\n{body}\nend)}}\n")
    return "\n".join(parts)
