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

from harness import wait_for

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
    (BASE.replace("{concurrency: 3}", "{concurrency: 1, command: 'sleep 9', jobs_per_worker: 4}"),
     "queues.email.jobs_per_worker", "without protocol: jsonl"),
    (BASE.replace("{concurrency: 3}", "{concurrency: 1, command: 'sleep 9'}") + "defaults: {jobs_per_worker: 2}\n",
     "defaults.jobs_per_worker", "queue 'email' runs a command without protocol: jsonl"),
    (BASE.replace("{concurrency: 3}", "{concurrency: 3, timeout: {grace: never}}"), "queues.email.timeout.grace",
     "'never'"),
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


# --------------------------------------------------------------------------
# Fleet-wide limits (issue 9): rate_limit, limiters, global_concurrency


def test_rate_limits_limiters_and_global_concurrency_are_parsed():
    from governor.config import RateLimit

    cfg = parse_config(yaml.safe_load("""
limiters:
  stripe: [{limit: 100, per: 1s}, {limit: 100000, per: day}]
  mail: {limit: 10, per: 250ms, algorithm: fixed_window}
queues:
  email:
    concurrency: 8
    rate_limit:
      - {limit: 300, per: 1m}
      - {limit: 10000, per: hour, algorithm: sliding_window}
      - {limit: "${DAILY}", per: 1d, burst: 50}
    global_concurrency: 5
    limiters: [stripe, mail]
  sync: {rate_limit: {limit: 100, per: second, algorithm: fixed_window}, limiters: stripe}
  plain: 2
  unlimited: {global_concurrency: off}
"""), env={"DAILY": "100000"})
    email, sync, plain = cfg.queues["email"], cfg.queues["sync"], cfg.queues["plain"]
    assert email.rate_limits == (RateLimit(300, 60.0), RateLimit(10000, 3600.0, "sliding_window"),
                                 RateLimit(100000, 86400.0, "token_bucket", burst=50))
    assert email.global_concurrency == 5 and email.limiters == ("stripe", "mail")
    assert sync.rate_limits == (RateLimit(100, 1.0, "fixed_window", 1),) and sync.limiters == ("stripe",)
    assert (plain.rate_limits, plain.limiters, plain.global_concurrency) == ((), (), None)
    assert cfg.queues["unlimited"].global_concurrency is None
    assert cfg.limiters == {"stripe": (RateLimit(100, 1.0), RateLimit(100000, 86400.0)),
                            "mail": (RateLimit(10, 0.25, "fixed_window"),)}
    assert parse_config({"queues": {"a": 1}}).limiters == {}


LIMITED = BASE + "limiters: {stripe: {limit: 100, per: 1s}}\n"


@pytest.mark.parametrize("queue, message", [
    ("rate_limit: [{limit: 300, per: 1m}, {limit: 0, per: 1s}]",
     "queues.email.rate_limit[1].limit: expected an integer >= 1, got 0"),
    ("rate_limit: {limit: -5, per: 1s}", "queues.email.rate_limit.limit: expected an integer >= 1, got -5"),
    ("rate_limit: {limit: 2.5, per: 1s}", "queues.email.rate_limit.limit: expected an integer >= 1, got 2.5"),
    ("rate_limit: {limit: many, per: 1s}", "queues.email.rate_limit.limit: expected an integer >= 1, got 'many'"),
    ("rate_limit: {limit: 10, per: 0}", "queues.email.rate_limit.per: expected a duration above zero, got 0"),
    ("rate_limit: {limit: 10, per: 0s}", "queues.email.rate_limit.per: expected a duration above zero, got '0s'"),
    ("rate_limit: {limit: 10, per: -1s}", "queues.email.rate_limit.per: expected a duration above zero, got '-1s'"),
    ("rate_limit: {limit: 10, per: fortnight}",
     "queues.email.rate_limit.per: expected a duration such as 1s, 1m, 1h or 1d (units ms/s/m/h/d, "
     "or the words second, minute, hour, day), got 'fortnight'"),
    ("rate_limit: {limit: 10, per: 1s, algorithm: token-bucket}",
     "queues.email.rate_limit.algorithm: unknown algorithm 'token-bucket'; did you mean 'token_bucket'? "
     "(known: token_bucket, sliding_window, fixed_window)"),
    ("rate_limit: {limit: 10, per: 1s, algorithm: sliding_window, burst: 5}",
     "queues.email.rate_limit.burst: only token_bucket takes a burst (got burst 5 with algorithm sliding_window)"),
    ("rate_limit: [{limit: 10, per: 1s, algorithm: fixed_window, burst: 1}]",
     "queues.email.rate_limit[0].burst: only token_bucket takes a burst"),
    ("rate_limit: {limit: 10, per: 1s, burst: 0}", "queues.email.rate_limit.burst: expected an integer >= 1, got 0"),
    ("rate_limit: {limit: 10, per: 1s, brust: 3}",
     "queues.email.rate_limit.brust: unknown key; did you mean 'burst'? (known keys: limit, per, algorithm, burst)"),
    ("rate_limit: {limit: 10}", "queues.email.rate_limit: missing 'per'"),
    ("rate_limit: []", "queues.email.rate_limit: expected at least one limit, got an empty list"),
    ("rate_limit: [100/s]", "queues.email.rate_limit[0]: expected a limit such as {limit: 300, per: 1m}, got '100/s'"),
    ("global_concurrency: 0", "queues.email.global_concurrency: expected an integer >= 1, got 0"),
    ("limiters: [stripe, strpe]",
     "queues.email.limiters[1]: no limiter 'strpe' in limiters (known: stripe); did you mean 'stripe'?"),
    ("limiters: [stripe, stripe]", "queues.email.limiters[1]: limiter 'stripe' is listed twice"),
])
def test_a_bad_limit_names_its_path_and_value(queue, message):
    text = LIMITED.replace("{concurrency: 3}", "{concurrency: 3, " + queue + "}")
    with pytest.raises(ConfigError) as exc:
        parse_config(yaml.safe_load(text))
    assert message in str(exc.value)


@pytest.mark.parametrize("text, message", [
    (BASE + "limiters: {stripe: []}\n", "limiters.stripe: expected at least one limit"),
    (BASE + "limiters: {stripe: [{limit: 1, per: 1s}, {limit: 1, per: 0}]}\n",
     "limiters.stripe[1].per: expected a duration above zero, got 0"),
    (BASE + "limiters: {'bad name': {limit: 1, per: 1s}}\n",
     "limiters.bad name: limiter names are 1-64 letters, digits or _.-"),
    (BASE.replace("{concurrency: 3}", "{limiters: stripe}"),
     "queues.email.limiters: no limiter 'stripe' in limiters (none are defined"),
    (BASE + "defaults: {rate_limit: {limit: 1, per: 1s}}\n", "defaults.rate_limit: set per queue, not in defaults"),
])
def test_bad_named_limiters_and_limits_in_defaults_are_refused(text, message):
    with pytest.raises(ConfigError) as exc:
        parse_config(yaml.safe_load(text))
    assert message in str(exc.value)


def test_check_refuses_a_typo_in_a_limiter_name_and_prints_limits_with_units(tmp_path):
    bad = check(tmp_path, LIMITED.replace("{concurrency: 3}", "{limiters: [strpe]}"))
    assert bad.returncode == 2
    assert (f"{tmp_path / 'g.yaml'}: queues.email.limiters[0]: no limiter 'strpe' in limiters (known: stripe); "
            "did you mean 'stripe'?") in bad.stderr
    good = check(tmp_path, LIMITED.replace("{concurrency: 3}", """
    concurrency: 3
    rate_limit: [{limit: 300, per: 60}, {limit: 10000, per: hour, algorithm: sliding_window}]
    limiters: stripe
    global_concurrency: 5"""))
    assert good.returncode == 0, good.stderr
    shown = yaml.safe_load(good.stdout)
    assert shown["queues"]["email"]["rate_limit"] == [
        {"limit": 300, "per": "1m", "algorithm": "token_bucket", "burst": 1},
        {"limit": 10000, "per": "1h", "algorithm": "sliding_window"}]
    assert shown["queues"]["email"]["limiters"] == ["stripe"]
    assert shown["queues"]["email"]["global_concurrency"] == 5
    assert shown["limiters"] == {"stripe": [{"limit": 100, "per": "1s", "algorithm": "token_bucket", "burst": 1}]}


def test_a_period_that_format_duration_would_round_is_shown_exactly():
    cfg = parse_config({"queues": {"a": {"rate_limit": {"limit": 3, "per": "1.5ms"}}}})
    assert cfg.to_dict()["queues"]["a"]["rate_limit"][0]["per"] == "0.0015s"


def test_a_sighup_to_a_zero_rate_limit_keeps_the_running_config(governor):
    governor.start({"w": {"concurrency": 1}})
    pid = governor.workers("w")[0]["pid"]
    governor.write({"w": {"concurrency": 2, "rate_limit": {"limit": 0, "per": "1s"}}})
    governor.signal(signal.SIGHUP)
    wait_for(lambda: "reload failed" in governor.log(), 5, "the reload to be refused")
    assert ("reload failed, keeping the running config: "
            f"{governor.config_path}: queues.w.rate_limit.limit: expected an integer >= 1, got 0") in governor.log()
    time.sleep(0.3)  # a reload that had been applied would be starting a second worker by now
    assert [w["pid"] for w in governor.workers("w")] == [pid]
    governor.client.enqueue("w", "tasks:record", "after-reload")
    wait_for(lambda: governor.lines("done") == ["after-reload"], 5, "a job under the old config")
