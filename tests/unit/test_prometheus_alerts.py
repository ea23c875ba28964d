"""deploy/prometheus/: the alert rules name metrics and labels the relay (and the listener
agent) really expose, are
documented in docs/operations.md, and (where ``promtool`` is on PATH) pass Prometheus's own
checks and the rules' unit tests (``alerts.test.yaml``: each alert fires on its series and
stays quiet below its threshold).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]
from prometheus_client import CollectorRegistry, generate_latest
from tests.harness.metrics import parse_exposition

from hybridrelay.listener.status import AgentCollector
from hybridrelay.listener.supervisor import AgentStatus, MappingStatus
from hybridrelay.relay.metrics import RelayMetrics

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yaml"
OPERATIONS_MD = ROOT / "docs" / "operations.md"
SEVERITIES = {"critical", "warning", "info"}
# Series that Prometheus itself makes, not the relay.
PROMETHEUS_OWN = {"up"}
_SELECTOR = re.compile(r"\b([a-z_][a-z0-9_]*)\s*(\{[^}]*\})?")
_LABEL_MATCHER = re.compile(r'([a-z_][a-z0-9_]*)\s*(?:=~|!~|!=|=)\s*"')
_PROMQL_WORDS = {
    "sum",
    "by",
    "rate",
    "increase",
    "time",
    "and",
    "or",
    "on",
    "humanize",
    "without",
    "histogram_quantile",
}


def _groups() -> dict[str, list[dict[str, Any]]]:
    data = yaml.safe_load(ALERTS.read_text("utf-8"))
    return {group["name"]: group["rules"] for group in data["groups"]}


def _rules() -> list[dict[str, Any]]:
    return [rule for rules in _groups().values() for rule in rules]


def _exposed() -> dict[str, set[str]]:
    """Every sample name the relay's registry exposes, with its label names (all families
    present: a hybrid connection, a certificate, the cluster gauge)."""
    metrics = RelayMetrics()
    metrics.listener_connected("mqtt")
    metrics.limit_hit("max_headers")
    metrics.tls_certificate_expiry.labels("tls_cert").set(1)
    metrics.cluster_available = lambda: True
    metrics.tls_reloads.labels("failed").inc()
    metrics.rejected(503, "connect", "mqtt")
    agent = CollectorRegistry()
    agent.register(AgentCollector(_agent_status))
    names: dict[str, set[str]] = {}
    for registry in (metrics.registry, agent):
        for name, labels in parse_exposition(generate_latest(registry).decode()):
            names.setdefault(name, set()).update(label for label, _ in labels)
    return names


def _agent_status() -> AgentStatus:
    mapping = MappingStatus(
        hc="mqtt",
        target="tcp://127.0.0.1:1883",
        state="online",
        connections=1,
        connections_online=1,
        attempts=1,
        connects=1,
        reconnects=0,
        active_streams=0,
        accepted=0,
        rejected=0,
        requests=0,
        bytes_up=0,
        bytes_down=0,
        error=None,
    )
    return AgentStatus(agent_id="gw", ready=True, reloads=0, reload_failures=0, mappings=(mapping,))


def _selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched) of each selector in a PromQL expression."""
    found = []
    for name, matchers in _SELECTOR.findall(re.sub(r"\bby \([^)]*\)", "", expr)):
        if name in _PROMQL_WORDS or name.isdigit():
            continue
        found.append((name, set(_LABEL_MATCHER.findall(matchers))))
    return found


def test_every_rule_is_complete_and_named_once() -> None:
    rules = _rules()
    assert len(rules) >= 6
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), names
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]


def test_rules_name_only_metrics_and_labels_the_relay_exposes() -> None:
    exposed = _exposed()
    for rule in _rules():
        selectors = _selectors(rule["expr"])
        assert selectors, rule["alert"]
        for name, labels in selectors:
            if name in PROMETHEUS_OWN:
                continue
            assert name in exposed, f"{rule['alert']}: the relay exposes no {name}"
            # job and instance are added by Prometheus; "by (hc)" labels are checked too.
            unknown = labels - exposed[name] - {"job", "instance"}
            assert not unknown, f"{rule['alert']}: {name} has no label {unknown}"
        for grouping in re.findall(r"by \(([^)]*)\)", rule["expr"]):
            for label in (part.strip() for part in grouping.split(",")):
                if label in {"job", "instance"}:
                    continue
                assert any(label in exposed[n] for n, _ in selectors if n in exposed), label


def test_every_alert_is_documented_in_the_operations_guide() -> None:
    text = OPERATIONS_MD.read_text("utf-8")
    section = text.split("## Metrics and alerts", 1)[1].split("\n## ", 1)[0]
    for rule in _rules():
        assert f"`{rule['alert']}`" in section, rule["alert"]


def test_the_example_scrape_config_loads_the_rules_under_the_jobs_they_select() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.example.yml").read_text("utf-8"))
    assert config["rule_files"] == ["alerts.yaml"]
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    groups = _groups()
    assert set(groups) == jobs == {"hybridrelay", "hybridrelay-agent"}
    for job, rules in groups.items():
        for rule in rules:
            selected = set(re.findall(r'job="([^"]*)"', rule["expr"]))
            assert selected == {job}, rule["alert"]


def _promtool(*args: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None and not os.environ.get("CI"):
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    assert promtool is not None, "promtool is not installed (.ci/run installs it)"
    done = subprocess.run(
        [promtool, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_checks_the_rules_and_the_config() -> None:
    _promtool("check", "rules", "alerts.yaml")
    _promtool("check", "config", "prometheus.example.yml")


def test_promtool_runs_the_rules_unit_tests() -> None:
    _promtool("test", "rules", "alerts.test.yaml")
