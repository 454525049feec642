"""The shipped Prometheus alert rules: valid for promtool, fire on sample series, name real metrics."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from django_poolguard.integrations import metrics  # noqa: F401  (registers the metrics)

RULES_DIR = Path(__file__).resolve().parents[2] / "docs" / "prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not found: install Debian's `prometheus` package (apt-get install -y prometheus)",
)


@needs_promtool
def test_promtool_accepts_the_rules():
    result = subprocess.run(
        [PROMTOOL, "check", "rules", "alerts.yml"], cwd=RULES_DIR, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout


@needs_promtool
def test_promtool_unit_tests_fire_every_alert():
    result = subprocess.run(
        [PROMTOOL, "test", "rules", "alerts_test.yml"],
        cwd=RULES_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tests = (RULES_DIR / "alerts_test.yml").read_text()
    rules = set(re.findall(r"^\s+- alert: (\w+)", (RULES_DIR / "alerts.yml").read_text(), re.M))
    fired = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:\n\s+- exp_labels", tests))
    assert fired == rules, f"alerts without a firing test: {rules - fired}"


def test_rules_only_use_metrics_the_app_exports():
    exported = {
        sample_name
        for family in REGISTRY.collect()
        if family.name.startswith("poolguard_")
        for sample_name in _sample_names(family)
    }
    used = set(re.findall(r"\b(poolguard_\w+)", (RULES_DIR / "alerts.yml").read_text()))
    assert used, "no metric in the rules?"
    assert used <= exported, f"rules name metrics nobody exports: {used - exported}"


def _sample_names(family) -> set[str]:
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    return {family.name + suffix for suffix in suffixes.get(family.type, [""])}


@needs_promtool
def test_every_grafana_query_is_valid_promql_on_exported_metrics(tmp_path):
    import json

    dashboard = json.loads((RULES_DIR.parent / "grafana" / "poolguard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    expressions += [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]
    assert len(expressions) >= 10
    # Grafana's variables, as Grafana would substitute them, so promtool can parse each query.
    substituted = [
        e.replace("$__rate_interval", "1m").replace("$job", ".*").replace("$alias", ".*") for e in expressions
    ]
    rules = {
        "groups": [
            {
                "name": "grafana",
                "rules": [{"record": f"grafana:query{i}", "expr": e} for i, e in enumerate(substituted)],
            }
        ]
    }
    path = tmp_path / "grafana_queries.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr

    exported = {
        name
        for family in REGISTRY.collect()
        if family.name.startswith("poolguard_")
        for name in _sample_names(family)
    }
    used = set(re.findall(r"\b(poolguard_\w+)", " ".join(expressions)))
    assert used <= exported, f"the dashboard names metrics nobody exports: {used - exported}"
