"""deploy/monitoring: every PromQL expression in the Grafana dashboard and the alert rules
names only metrics a broker exports (taken from the broker's registry, not from a list)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from semel.cluster.broker.metrics import BrokerMetrics, exported_metric_names

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
# Series Prometheus itself adds to every scrape target (not the broker's to export).
PROMETHEUS_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})
KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
                      "unless", "offset", "inf", "nan"})


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions,
    keywords, label names (in `{...}` matchers or `by (...)` lists) or parts of strings."""
    balance = expr.count("(") - expr.count(")"), expr.count("{") - expr.count("}"), expr.count("[") - expr.count("]")
    assert balance == (0, 0, 0), f"unbalanced brackets in {expr!r}"
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range durations, $__rate_interval
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for m in re.finditer(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?", text):
        if m.group(2) or m.group(1).lower() in KEYWORDS:
            continue  # a function call or a keyword
        names.add(m.group(1))
    return names


def dashboard_exprs() -> list[str]:
    dash = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    return [str(r["expr"]) for g in rules["groups"] for r in g["rules"]]


EXPORTED = exported_metric_names(BrokerMetrics().registry)


@pytest.mark.parametrize("expr", dashboard_exprs() + alert_exprs())
def test_every_expression_names_exported_metrics(expr: str) -> None:
    names = metric_names(expr)
    assert names, f"no metric in {expr!r}"
    unknown = names - EXPORTED - PROMETHEUS_SERIES
    assert not unknown, f"{expr!r} names {sorted(unknown)}, which no broker exports"


def test_the_checker_finds_names_and_ignores_the_rest() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, method) (rate(semel_rpc_duration_seconds_bucket'
            '{method="/semel.v1.Broker/Produce",code!="OK"}[$__rate_interval]))) > 1 or semel_bogus == 0')
    assert metric_names(expr) == {"semel_rpc_duration_seconds_bucket", "semel_bogus"}
    assert "semel_bogus" not in EXPORTED


def test_alert_rules_are_complete() -> None:
    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["alert"].startswith("Semel") and rule["labels"]["severity"] in {"critical", "warning", "info"}
            assert rule["annotations"]["summary"]
