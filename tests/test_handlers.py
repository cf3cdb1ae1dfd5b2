"""The allowlist, which is what keeps write access to Redis from being code execution."""

from __future__ import annotations

import sys

import pytest

from governor.supervise.handlers import HandlerError, HandlerRegistry, Payload


@pytest.fixture
def app(tmp_path, monkeypatch):
    (tmp_path / "apptasks.py").write_text(
        "from subprocess import check_output\n\ndef hello(name):\n    return 'hi ' + name\n")
    (tmp_path / "sideeffect.py").write_text(f"open({str(tmp_path / 'imported')!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for mod in ("apptasks", "sideeffect"):
        sys.modules.pop(mod, None)


def test_allowed_handler_resolves(app):
    assert HandlerRegistry(["apptasks:*"]).resolve("apptasks:hello")("ada") == "hi ada"


@pytest.mark.parametrize("name, reason", [
    ("apptasks:check_output", "not_allowed"),   # imported into the module, defined elsewhere
    ("apptasks:__setattr__", "malformed"),      # dunder
    ("apptasks:_private", "malformed"),
    ("os:system", "not_allowed"),
    ("apptasks:nothing", "unknown_handler"),
    ("apptasks", "malformed"),
])
def test_refusals_name_the_reason(app, name, reason):
    with pytest.raises(HandlerError) as err:
        HandlerRegistry(["apptasks:*"]).resolve(name)
    assert err.value.reason == reason


def test_a_module_outside_the_allowlist_is_never_imported(app):
    with pytest.raises(HandlerError):
        HandlerRegistry(["apptasks:*"]).resolve("sideeffect:run")
    assert not (app / "imported").exists()


@pytest.mark.parametrize("raw, words", [
    (b"", "no payload"),
    (b"{not json", "not JSON"),
    (b"[1, 2]", "JSON list, expected an object"),
    (b'{"args": []}', "'handler' must be a string"),
    (b'{"handler": "a:b", "args": {"x": 1}}', "'args' must be a list"),
    (b'{"handler": "a:b", "kwargs": [1]}', "'kwargs' must be an object"),
    (b"\xff\xfe", "not JSON"),
])
def test_malformed_payloads_say_what_is_wrong(raw, words):
    with pytest.raises(HandlerError) as err:
        Payload.parse(raw)
    assert err.value.reason == "malformed" and words in str(err.value)
