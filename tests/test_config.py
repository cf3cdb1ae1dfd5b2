"""Config validation: what `governor check` tells an operator about a bad file."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from governor.config import ConfigError, load_config, parse_config

from conftest import wait_for

BASE = """
redis: {url: "redis://127.0.0.1:6379/0"}
app: {handlers: ["myapp.tasks:*"]}
queues:
  email: {concurrency: 3}
"""


def check(tmp_path: Path, text: str) -> subprocess.CompletedProcess:
    path = tmp_path / "g.yaml"
    path.write_text(text)
    return subprocess.run([sys.executable, "-m", "governor", "check", "-c", str(path)],
                          capture_output=True, text=True, timeout=30)


def test_check_accepts_the_shipped_example_and_prints_effective_config():
    example = Path(__file__).resolve().parent.parent / "etc" / "governor.yaml"
    out = subprocess.run([sys.executable, "-m", "governor", "check", "-c", str(example)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "concurrency: 2" in out.stdout
    assert "hard: 1GiB" in out.stdout  # inherited from defaults


@pytest.mark.parametrize("text, path, words", [
    (BASE.replace("concurrency: 3", "concurency: 3"), "queues.email.concurency", "did you mean 'concurrency'"),
    (BASE + "defaults: {memory: {hard: 10XB}}\n", "defaults.memory.hard", "'10XB'"),
    (BASE.replace("concurrency: 3", "concurrency: -1"), "queues.email.concurrency", "integer >= 0, got -1"),
    (BASE.replace("concurrency: 3", "concurrency: ten"), "queues.email.concurrency", "got 'ten'"),
    (BASE.replace("{concurrency: 3}", "{concurrency: 3, timeout: {hard: 5 minutes}}"), "queues.email.timeout.hard", "'5 minutes'"),
    (BASE + "shutdown_timeout: soon\n", "shutdown_timeout", "'soon'"),
    (BASE + "metrics: {listen: nowhere}\n", "metrics.listen", "HOST:PORT"),
])
def test_check_names_the_path_and_the_bad_value(tmp_path, text, path, words):
    out = check(tmp_path, text)
    assert out.returncode == 2
    assert f"{path}:" in out.stderr
    assert words in out.stderr
    assert str(tmp_path / "g.yaml") in out.stderr


def test_invalid_yaml_names_line(tmp_path):
    out = check(tmp_path, "queues:\n  email: {concurrency: 3\n")
    assert out.returncode == 2
    assert "invalid YAML" in out.stderr and "line" in out.stderr


def test_defaults_are_inherited_and_overridable():
    cfg = parse_config({
        "defaults": {"memory": {"soft": "100MiB", "hard": "200MiB"}, "timeout": {"soft": "5s", "hard": "10s"},
                     "retry": {"max": 7}},
        "queues": {"a": {"concurrency": 1}, "b": {"concurrency": 2, "memory": {"hard": "1GiB"},
                                                  "retry": {"backoff": "250ms"}}},
    })
    a, b = cfg.queues["a"].settings, cfg.queues["b"].settings
    assert (a.memory.soft, a.memory.hard) == (100 * 2**20, 200 * 2**20)
    assert (b.memory.soft, b.memory.hard) == (100 * 2**20, 2**30)
    assert a.timeout.hard == 10.0 and b.timeout.soft == 5.0
    assert b.retry.max == 7 and b.retry.backoff == 0.25
    assert a.retry.backoff == 2.0


def test_limits_can_be_switched_off_and_soft_must_not_exceed_hard():
    cfg = parse_config({"queues": {"a": {"memory": {"soft": "off"}, "recycle": {"max_jobs": "off"}}}})
    assert cfg.queues["a"].settings.memory.soft is None
    assert cfg.queues["a"].settings.recycle.max_jobs is None
    with pytest.raises(ConfigError, match=r"queues.a.memory: soft \(2GiB\) is above hard \(1GiB\)"):
        parse_config({"queues": {"a": {"memory": {"soft": "2GiB"}}}})


def test_environment_interpolation(tmp_path):
    env = {"REDIS_URL": "redis://10.0.0.1:6380/2", "N": "4", "EMPTY": ""}
    cfg = parse_config({"redis": {"url": "${REDIS_URL:-embedded}", "prefix": "${PFX:-gov}"},
                        "queues": {"a": {"concurrency": "${N}"}, "b": {"concurrency": "${EMPTY:-2}"}}},
                       env=env)
    assert cfg.redis.url == "redis://10.0.0.1:6380/2" and cfg.redis.prefix == "gov"
    assert cfg.queues["a"].concurrency == 4 and cfg.queues["b"].concurrency == 2
    with pytest.raises(ConfigError, match=r"redis.url: environment variable NOPE is not set"):
        parse_config({"redis": {"url": "${NOPE}"}, "queues": {"a": 1}}, env={})


def test_passwords_are_masked_in_effective_config():
    cfg = parse_config({"redis": {"url": "redis://app:s3cret@10.0.0.1:6379/0"}, "queues": {"a": 1}})
    assert "s3cret" not in str(cfg.to_dict())
    assert "app:***@" in cfg.to_dict()["redis"]["url"]


def test_app_path_resolves_against_the_config_file(tmp_path):
    (tmp_path / "g.yaml").write_text(BASE.replace("app: {", "app: {path: [lib], "))
    cfg = load_config(str(tmp_path / "g.yaml"))
    assert cfg.app.path == (str(tmp_path / "lib"),)


def test_a_zero_limit_is_refused_rather_than_meaning_no_limit():
    with pytest.raises(ConfigError, match=r"queues.a.memory.hard: expected a limit above zero, or 'off'"):
        parse_config({"queues": {"a": {"memory": {"hard": 0}}}})
    with pytest.raises(ConfigError, match=r"defaults.timeout.hard: expected a limit above zero"):
        parse_config({"defaults": {"timeout": {"hard": "0s"}}, "queues": {"a": 1}})


def test_state_dir_search_order(monkeypatch):
    from governor.config import default_state_dir, state_dir_candidates

    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    monkeypatch.delenv("GOVERNOR_STATE_DIR", raising=False)
    plain = state_dir_candidates("/etc/governor/governor.yaml")
    assert plain[0] == "/run/governor" and "/tmp" in plain[-1]
    assert state_dir_candidates("/etc/governor/media.yaml")[:2] == ["/run/governor/media", "/run/governor"]
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/governor/media")
    assert default_state_dir("/etc/governor/media.yaml") == "/run/governor/media"
    monkeypatch.setenv("GOVERNOR_STATE_DIR", "/srv/gov")
    assert default_state_dir("/etc/governor/media.yaml") == "/srv/gov"


# --------------------------------------------------------------------------
# A file that expands without bound is refused before anything walks it


def _billion_laughs(header: str) -> str:
    """Nine levels of ten aliases each: 10**9 handler strings from a few hundred bytes, inside
    app.handlers, which the parser walks value by value."""
    levels = ["    - &l0 [" + ", ".join(['"tasks:lol"'] * 10) + "]"]
    for i in range(1, 10):
        levels.append(f"    - &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    return header + "app:\n  handlers:\n" + "\n".join(levels) + "\n"


BOMB_HEADER = 'redis: {url: "redis://127.0.0.1:6379/0"}\nqueues: {w: 1}\n'


def test_an_alias_bomb_is_refused_at_check_time_quickly(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(_billion_laughs(BOMB_HEADER))
    assert path.stat().st_size < 2000
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "governor", "check", "-c", str(path)],
                         capture_output=True, text=True, timeout=30)
    assert time.monotonic() - started < 2.0
    assert out.returncode == 2
    assert str(path) in out.stderr and "YAML expands to more than 100,000 values (an alias bomb?)" in out.stderr


def test_aliases_that_stay_small_are_fine_and_self_reference_is_refused(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text('app: {handlers: &h ["a.b:*"], imports: *h}\nqueues: {a: 1}\n')
    assert load_config(str(path)).app.imports == ("a.b:*",)
    path.write_text('app: {handlers: &h ["a.b:*", *h]}\nqueues: {a: 1}\n')  # contains itself
    with pytest.raises(ConfigError, match="alias bomb"):
        load_config(str(path))


def test_an_oversized_file_is_refused(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(BASE + "#" + "x" * (1024 * 1024) + "\n")
    with pytest.raises(ConfigError, match=r"g.yaml: the file is larger than 1MiB"):
        load_config(str(path))


def test_a_sighup_to_an_alias_bomb_keeps_the_old_config_and_the_master_answers(governor):
    governor.start({"w": {"concurrency": 1}})
    pid = governor.workers("w")[0]["pid"]
    cfg = governor.config({"w": {"concurrency": 1}})
    del cfg["app"]
    governor.config_path.write_text(_billion_laughs(yaml.safe_dump(cfg)))
    governor.signal(signal.SIGHUP)
    wait_for(lambda: "alias bomb" in governor.log(), 5, "the reload to be refused")
    assert "reload failed, keeping the running config" in governor.log()
    assert [w["pid"] for w in governor.workers("w")] == [pid]  # the master answers, unchanged
    governor.client.enqueue("w", "tasks:record", "after-bomb")
    wait_for(lambda: governor.lines("done") == ["after-bomb"], 5, "a job under the old config")
