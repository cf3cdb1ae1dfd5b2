"""The Prometheus alert rules (etc/prometheus) and the Grafana dashboard (etc/grafana).

promtool (Debian package prometheus) checks the rules and runs their unit tests, which
fire every alert from sample series; it also parses every dashboard query. Both files may
only name metrics the master exports, with their labels and label values, so neither can
drift from governor/ops/metrics.py unnoticed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "etc" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "etc" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "etc" / "grafana" / "governor.json"

OUTCOMES = {"ok", "exception", "timeout_soft", "timeout_hard", "memory_hard", "memory_soft", "crashed",
            "throttled", "import_error", "not_allowed", "unknown_handler", "malformed", "lease_lost",
            "shutdown", "other"}
QUEUE_STATES = {"waiting", "delayed", "active", "dead", "done"}
WORKER_STATES = {"starting", "idle", "busy", "draining", "stopping"}

# Every series the master exports: its labels (the instance's job/instance labels come from the scrape).
_HISTOGRAMS = {"governor_job_duration_seconds", "governor_queue_wait_seconds"}
METRICS: dict[str, set[str]] = {
    "governor_jobs_total": {"queue", "outcome"},
    **{f"{h}_bucket": {"queue", "le"} for h in _HISTOGRAMS},
    **{f"{h}_{part}": {"queue"} for h in _HISTOGRAMS for part in ("sum", "count")},
    "governor_worker_exits_total": {"queue", "reason"},
    "governor_redis_errors_total": set(),
    "governor_lease_lost_total": {"queue"},
    "governor_lease_frozen_total": {"queue"},
    "governor_master_loop_lag_seconds": set(),
    "governor_queue_jobs": {"queue", "state"},
    "governor_queue_oldest_waiting_age_seconds": {"queue"},
    "governor_queue_throttled_reserves_total": {"queue"},
    "governor_queue_paused": {"queue"},
    "governor_queue_global_concurrency": {"queue"},
    "governor_workers": {"queue", "state"},
    "governor_pool_desired_workers": {"queue"},
    "governor_pool_actual_workers": {"queue"},
    "governor_pool_min_workers": {"queue"},
    "governor_pool_max_workers": {"queue"},
    "governor_pool_backoff_seconds": {"queue"},
    "governor_worker_memory_bytes": {"queue", "index"},
    "governor_redis_up": set(),
    "governor_scale_decisions_total": {"queue", "direction", "reason"},
    "governor_handler_run_seconds": {"queue", "handler", "quantile"},
    "governor_handler_timeout_seconds": {"queue", "handler", "adaptive"},
    "governor_handler_adaptive_fallback": {"queue", "handler"},
    "governor_partitions_unheld": {"queue"},
    "governor_fleet_masters": set(),
    "governor_master_heartbeat_timestamp_seconds": set(),
}
LABEL_VALUES = {
    ("governor_jobs_total", "outcome"): OUTCOMES,
    ("governor_queue_jobs", "state"): QUEUE_STATES,
    ("governor_workers", "state"): WORKER_STATES,
}
TARGET_LABELS = {"job", "instance"}  # added by Prometheus at scrape time

NAME = re.compile(r"governor_[a-z_]+")
SELECTOR = re.compile(r"(governor_[a-z_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"([^"]*)"')

ALERTS = {  # name: severity; the alerts the rules must define, no more, no fewer
    "GovernorQueueWaitWarning": "warning",
    "GovernorQueueWaitCritical": "critical",
    "GovernorQueueDepthWarning": "warning",
    "GovernorQueueDepthCritical": "critical",
    "GovernorDeadLetterGrowing": "warning",
    "GovernorErrorRateWarning": "warning",
    "GovernorErrorRateCritical": "critical",
    "GovernorTimeoutRateHigh": "warning",
    "GovernorPoolBackingOff": "warning",
    "GovernorPartitionsUnheld": "critical",
    "GovernorRedisDown": "critical",
    "GovernorMasterHeartbeatStale": "critical",
    "GovernorMasterDown": "critical",
    "GovernorFleetMastersDropped": "warning",
}

PANELS = ["Jobs/s by outcome", "Error rate", "Waiting / active / dead", "Oldest wait",
          "Job duration p50 / p95 / p99", "Workers by state", "Desired vs actual workers",
          "Scale decisions", "Worker memory", "Redis up", "Master loop lag", "Handler p95 and limit"]


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian package 'prometheus'; .ci/run installs it)")
    return path


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    assert [g["name"] for g in groups] == ["governor"]
    return groups[0]["rules"]


def panels() -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    out = []
    for p in json.loads(DASHBOARD.read_text())["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def exprs_of_dashboard() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in panels() for t in p.get("targets", [])]


def misnamed(expr: str) -> list[str]:
    """What in a query names a metric, a label or a label value the master does not export."""
    wrong = [f"metric {n}" for n in NAME.findall(expr) if n not in METRICS]
    for metric, matchers in SELECTOR.findall(expr):
        for label, _op, value in MATCHER.findall(matchers):
            if metric in METRICS and label not in METRICS[metric] | TARGET_LABELS:
                wrong.append(f"label {metric}{{{label}}}")
            allowed = LABEL_VALUES.get((metric, label))
            if allowed is not None:
                wrong += [f"value {metric}{{{label}={v!r}}}" for v in value.split("|") if v not in allowed]
    return wrong


def test_promtool_checks_the_rules():
    res = run_promtool("check", "rules", RULES)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in res.stdout


def test_promtool_unit_tests_fire_every_alert_and_keep_quiet_cases_quiet():
    res = run_promtool("test", "rules", RULE_TESTS)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout

    # the unit tests cover every alert firing, and some that must not fire
    cases = [c for t in yaml.safe_load(RULE_TESTS.read_text())["tests"] for c in t["alert_rule_test"]]
    fired = {c["alertname"] for c in cases if c.get("exp_alerts")}
    assert fired == set(ALERTS), f"alerts never fired by {RULE_TESTS.name}: {set(ALERTS) - fired}"
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert {"GovernorErrorRateWarning", "GovernorErrorRateCritical"} <= quiet


def test_rules_have_severity_annotations_and_known_metrics():
    by_name = {r["alert"]: r for r in rules()}
    assert len(by_name) == len(rules()), "duplicate alert names"
    assert {name: r["labels"]["severity"] for name, r in by_name.items()} == ALERTS
    for name, rule in by_name.items():
        notes = rule["annotations"]
        assert set(notes) >= {"summary", "description"}, name
        text = notes["summary"] + notes["description"]
        assert "$value" in text, name
        # an alert per queue names its queue; one per master (no queue label) names the master
        assert "$labels.queue" in text or "$labels.instance" in text or "$labels.job" in text, name
        if "queue" in rule["expr"] and "by (job)" not in rule["expr"]:
            assert "$labels.queue" in text, name
        assert misnamed(rule["expr"]) == [], name


def test_dashboard_shape():
    board = json.loads(DASHBOARD.read_text())
    assert 36 <= board["schemaVersion"] <= 41
    assert board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    queue = variables["queue"]
    assert queue["type"] == "query"
    query = queue["query"]["query"] if isinstance(queue["query"], dict) else queue["query"]
    assert query == "label_values(governor_queue_jobs, queue)"

    all_panels = panels()
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    titles = {p["title"] for p in all_panels}
    assert set(PANELS) <= titles, f"missing panels: {set(PANELS) - titles}"
    for p in all_panels:
        assert set(p["gridPos"]) == {"x", "y", "w", "h"}, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t.get("datasource", p["datasource"]) == p["datasource"], p["title"]

    # every panel but the master-wide ones follows the queue variable
    for title, expr in exprs_of_dashboard():
        if NAME.search(expr) and "{" in expr and "queue" in expr:
            assert 'queue=~"$queue"' in expr, (title, expr)
    durations = [e for t, e in exprs_of_dashboard() if t == "Job duration p50 / p95 / p99"]
    assert {re.search(r"histogram_quantile\(([\d.]+),", e).group(1) for e in durations} == {"0.5", "0.95", "0.99"}
    assert all("governor_job_duration_seconds_bucket" in e for e in durations)


def test_dashboard_queries_name_only_exported_metrics():
    exprs = exprs_of_dashboard()
    assert len(exprs) >= len(PANELS)
    wrong = {f"{title}: {expr}": bad for title, expr in exprs if (bad := misnamed(expr))}
    assert wrong == {}


def test_promtool_parses_every_dashboard_query(tmp_path):
    """Each query, with Grafana's variables filled in, as a recording rule: promtool parses it."""
    fill = {"$__rate_interval": "5m", "$__interval": "1m", "$queue": ".*"}
    records = []
    for i, (title, expr) in enumerate(exprs_of_dashboard()):
        for var, value in fill.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, (title, expr)
        records.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    res = run_promtool("check", "rules", path)
    assert res.returncode == 0, res.stdout + res.stderr
