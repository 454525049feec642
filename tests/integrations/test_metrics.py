"""Prometheus metrics: the documented table on the default registry, fed by the watchdog, monotonic."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from django.db import connections
from django.test import Client, override_settings
from prometheus_client import REGISTRY

from django_poolguard.engine.pool import discard_pool, get_pool
from django_poolguard.runtime import get_runtime

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]

DOCUMENTED_METRICS = {
    # name: (type, labels)
    "poolguard_pool_connections": ("gauge", {"alias", "state"}),
    "poolguard_pool_max_connections": ("gauge", {"alias"}),
    "poolguard_pool_waiting": ("gauge", {"alias"}),
    "poolguard_acquire_seconds": ("histogram", {"alias"}),
    "poolguard_checkout_seconds": ("histogram", {"alias"}),
    "poolguard_acquire_timeouts": ("counter", {"alias"}),
    "poolguard_requests_shed": ("counter", {"alias", "priority"}),
    "poolguard_priority_acquire_seconds": ("histogram", {"alias", "priority"}),
    "poolguard_leaks_detected": ("counter", {"alias", "kind"}),
    "poolguard_leaks_active": ("gauge", {"alias"}),
    "poolguard_connections_reclaimed": ("counter", {"alias", "reason"}),
    "poolguard_connections_opened": ("counter", {"alias"}),
    "poolguard_connection_errors": ("counter", {"alias"}),
    "poolguard_pool_lease": ("gauge", {"alias"}),
    "poolguard_fleet_budget": ("gauge", {"alias"}),
    "poolguard_lease_fallback": ("gauge", {"alias"}),
}


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_the_documented_metrics_are_registered_with_its_types_and_labels():
    get_runtime().exporter.export()
    families = {family.name: family for family in REGISTRY.collect() if family.name.startswith("poolguard_")}
    for name, (kind, labels) in DOCUMENTED_METRICS.items():
        assert name in families, f"{name} is missing"
        assert families[name].type == kind, name
        collector = REGISTRY._names_to_collectors[name if kind != "counter" else name + "_total"]
        assert set(collector._labelnames) == labels, name


def test_the_watchdog_exports_gauges_histograms_and_counters(make_alias, holders):
    alias = make_alias(pool={"min_size": 0, "max_size": 3, "timeout": 0.3})
    for _ in range(5):
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT 1")
        connections[alias].close()
    holders(alias, name="report")
    holders(alias, name="report")
    get_runtime().watchdog.run_once(force=True)

    assert value("poolguard_pool_connections", alias=alias, state="in_use") == 2
    assert value("poolguard_pool_connections", alias=alias, state="idle") == get_pool(alias).state()["idle"]
    assert value("poolguard_pool_max_connections", alias=alias) == 3
    assert value("poolguard_pool_waiting", alias=alias) == 0
    assert value("poolguard_acquire_seconds_count", alias=alias) == 7
    assert value("poolguard_checkout_seconds_count", alias=alias) == 5
    assert (
        value("poolguard_connections_opened_total", alias=alias) == get_pool(alias).connections_opened() >= 2
    )

    get_runtime().watchdog.run_once(force=True)
    assert value("poolguard_acquire_seconds_count", alias=alias) == 7, "each sample is observed once"


@pytest.mark.urls("tests.testapp.shed")
def test_shed_requests_and_timeouts_are_counted_once_and_served_on_metrics(make_alias, holders):
    alias = make_alias(pool={"min_size": 0, "max_size": 1, "timeout": 0.2})
    holders(alias)
    client = Client()
    assert [client.get("/query/", {"alias": alias}).status_code for _ in range(3)] == [503] * 3
    get_runtime().watchdog.run_once(force=True)
    get_runtime().watchdog.run_once(force=True)

    assert value("poolguard_requests_shed_total", alias=alias, priority="normal") == 3
    assert value("poolguard_acquire_timeouts_total", alias=alias) == 3
    assert value("poolguard_acquire_rejected_total", alias=alias) == 0

    body = client.get("/metrics").content.decode()
    assert f'poolguard_requests_shed_total{{alias="{alias}",priority="normal"}} 3.0' in body
    assert f'poolguard_pool_connections{{alias="{alias}",state="in_use"}} 1.0' in body


def test_counters_keep_counting_up_when_the_pool_is_reopened(make_alias):
    alias = make_alias(pool={"min_size": 0, "max_size": 1, "timeout": 2})
    connections[alias].ensure_connection()
    connections[alias].close()
    get_runtime().watchdog.run_once(force=True)
    opened = value("poolguard_connections_opened_total", alias=alias)
    assert opened >= 1

    discard_pool(alias).close()
    get_runtime().watchdog.run_once(force=True)
    assert value("poolguard_pool_max_connections", alias=alias) == 0, "a closed pool's gauges drop to zero"

    connections[alias].ensure_connection()
    connections[alias].close()
    get_runtime().watchdog.run_once(force=True)
    assert value("poolguard_connections_opened_total", alias=alias) == opened + 1
    assert value("poolguard_pool_max_connections", alias=alias) == 1


def test_leak_and_reclaim_counters_follow_the_ledger(make_alias):
    alias = make_alias()
    connections[alias].ensure_connection()
    ledger = get_pool(alias).ledger
    ledger.count("leaks_total", 2)
    ledger.count("hoards_total")
    ledger.count_reclaimed("thread_exited")
    get_runtime().watchdog.run_once(force=True)
    connections[alias].close()

    assert value("poolguard_leaks_detected_total", alias=alias, kind="leak") == 2
    assert value("poolguard_leaks_detected_total", alias=alias, kind="hoard") == 1
    reclaimed = [
        sample
        for family in REGISTRY.collect()
        if family.name == "poolguard_connections_reclaimed"
        for sample in family.samples
        if sample.labels["alias"] == alias and sample.name.endswith("_total")
    ]
    assert [(s.labels["reason"], s.value) for s in reclaimed] == [("thread_exited", 1)]


def test_the_app_works_without_prometheus_client():
    """The ``prometheus`` extra is optional: without it the app starts, pools work, no metrics task."""
    script = textwrap.dedent(
        """
        import sys
        sys.modules["prometheus_client"] = None  # as if the extra were not installed
        import django
        django.setup()
        from django.db import connections
        from django_poolguard.runtime import get_runtime
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT 1")
        connections["default"].close()
        get_runtime().watchdog.run_once(force=True)
        assert "metrics" not in get_runtime().task_names(), get_runtime().task_names()
        assert "django_poolguard.integrations.metrics" not in sys.modules
        print("ok")
        """
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@override_settings(POOLGUARD={"MONITOR_INTERVAL": 0.05})
def test_the_watchdog_thread_exports_by_itself(make_alias):
    import time

    alias = make_alias()
    connections[alias].ensure_connection()
    get_runtime().watchdog.ensure_started()
    deadline = time.monotonic() + 5
    while (
        value("poolguard_pool_connections", alias=alias, state="in_use") != 1 and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    connections[alias].close()
    assert value("poolguard_pool_connections", alias=alias, state="in_use") == 1


def test_poolguard_serves_the_registry_without_django_prometheus(rf):
    """Django 6.1 projects cannot install django-prometheus 2.5: poolguard's own view exports."""
    from django_poolguard.views import metrics_view

    response = metrics_view(rf.get("/metrics"))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    body = response.content.decode()
    assert "# TYPE poolguard_pool_connections gauge" in body
    assert "# TYPE poolguard_acquire_seconds histogram" in body


@pytest.mark.urls("tests.testapp.priority_views")
def test_sheds_and_acquire_waits_are_exported_by_priority_class(make_alias, holders, settings):
    settings.POOLGUARD = {
        **settings.POOLGUARD,
        "PRIORITIES": {"low": ["reports:*"], "critical": ["checkout"]},
    }
    alias = make_alias(
        pool={"min_size": 0, "max_size": 2, "timeout": 2}, poolguard={"reserve": {"critical": 1}}
    )
    client = Client()
    assert client.get("/checkout/", {"alias": alias}).content == b"critical"
    connections[alias].close()  # the test client keeps the request's connection
    holders(alias)
    assert client.get("/reports/export/", {"alias": alias}).status_code == 503
    get_runtime().watchdog.run_once(force=True)

    assert value("poolguard_requests_shed_total", alias=alias, priority="low") == 1
    assert value("poolguard_requests_shed_total", alias=alias, priority="critical") == 0
    assert value("poolguard_priority_acquire_seconds_count", alias=alias, priority="critical") == 1
    assert (
        value("poolguard_priority_acquire_seconds_count", alias=alias, priority="normal") == 1
    )  # the holder
