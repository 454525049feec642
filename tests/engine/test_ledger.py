"""The checkout ledger records who holds each connection, why and from where."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connections

import django_poolguard
from django_poolguard.engine.context import checkout_context
from django_poolguard.engine.pool import get_pool
from django_poolguard.fleet.snapshots import checkout_snapshot
from tests.testapp.models import Item

pytestmark = pytest.mark.django_db(transaction=True)


def run_report_query(alias: str) -> None:
    Item.objects.using(alias).count()


def test_checkout_records_holder_context_and_application_stack(make_alias):
    alias = make_alias()
    with checkout_context("GET /api/report"):
        run_report_query(alias)

    [checkout] = get_pool(alias).ledger.checkouts()
    entry = checkout_snapshot(checkout)
    assert entry["thread"] == "MainThread"
    assert entry["alive"] is True
    assert entry["context"] == "GET /api/report"
    # Application frames come first: the first line is this file's function that queried.
    assert entry["stack"][0].startswith("tests/engine/test_ledger.py:")
    assert entry["stack"][0].endswith("in run_report_query")
    assert any(
        "in test_checkout_records_holder_context_and_application_stack" in line for line in entry["stack"]
    )
    assert any(line.startswith("django/") for line in entry["stack"]), (
        "library frames follow the application's"
    )

    connections[alias].close()
    assert get_pool(alias).ledger.checkouts() == []


@pytest.mark.parametrize("release", ["request", "transaction"])
def test_the_recorded_stack_starts_at_the_applications_call_with_no_plumbing_frame(make_alias, release):
    """The raw stack, not only the formatted one: a connection-opening frame recorded before the
    application's would take a place of STACK_DEPTH in every checkout (and its capture costs more)."""
    alias = make_alias(poolguard={"release": release})

    def query_here() -> Any:
        with connections[alias].cursor() as cursor:  # the checkout: cursor() opens the connection
            [checkout] = get_pool(alias).ledger.checkouts()
            cursor.execute("SELECT 1")
            return checkout.stack

    for _ in range(3):  # the first capture finds where the plumbing ends; the next ones probe there
        raw = query_here()
        assert raw[0] is query_here.__code__, [code.co_name for code in raw[::2]]  # type: ignore[union-attr]
        connections[alias].close()


def test_checkout_outside_any_context_is_labelled_by_thread(make_alias, holders):
    alias = make_alias()
    holders(alias, name="export-worker")
    [checkout] = get_pool(alias).ledger.checkouts()
    assert checkout.label == "thread export-worker"
    assert checkout.origin.startswith("tests/conftest.py:") and checkout.origin.endswith(
        "in Holder.hold_connection"
    )


def test_snapshot_reports_pool_state_in_the_published_shape(make_alias, holders):
    alias = make_alias(pool={"min_size": 0, "max_size": 3, "timeout": 2}, poolguard={"workload": "reports"})
    holders(alias, name="h1")
    holders(alias, name="h2")

    state = django_poolguard.snapshot()[alias]
    assert state["workload"] == "reports"
    assert (state["max"], state["in_use"], state["waiting"]) == (3, 2, 0)
    assert state["utilization"] == pytest.approx(2 / 3, abs=1e-3)
    assert state["status"] == "healthy"
    assert state["acquired_total"] == 2
    assert set(state["acquire_ms"]) == {"p50", "p95", "p99"}
    assert sorted(c["thread"] for c in state["checkouts"]) == ["h1", "h2"]
    assert all(c["alive"] for c in state["checkouts"])

    process = django_poolguard.process_snapshot()
    assert {"host", "pid", "role", "updated_at", "aliases"} <= set(process)


def test_snapshot_turns_warning_at_the_alert_utilization(make_alias, holders, settings):
    settings.POOLGUARD = {**settings.POOLGUARD, "ALERT_UTILIZATION": 0.5}
    alias = make_alias(pool={"min_size": 0, "max_size": 2, "timeout": 2})
    holders(alias)
    assert django_poolguard.snapshot()[alias]["status"] == "warning"


def test_stack_capture_can_be_switched_off(make_alias, settings):
    settings.POOLGUARD = {**settings.POOLGUARD, "CAPTURE_STACKS": False}
    alias = make_alias()
    run_report_query(alias)
    [checkout] = get_pool(alias).ledger.checkouts()
    assert checkout.stack == ()
    assert checkout_snapshot(checkout)["stack"] == []
    connections[alias].close()


def test_ledger_stays_bounded_by_checked_out_connections(make_alias):
    alias = make_alias()
    for _ in range(300):
        run_report_query(alias)
        connections[alias].close()
    ledger = get_pool(alias).ledger
    assert len(ledger) == 0
    assert ledger.acquired_total == ledger.returned_total == 300
    assert len(ledger.acquire_samples()) == 300


def test_first_pool_starts_the_watchdog(make_alias):
    from django_poolguard.runtime import get_runtime

    alias = make_alias()
    run_report_query(alias)
    assert get_runtime().watchdog.running
    connections[alias].close()


def test_counters_are_exact_under_concurrent_checkouts(make_alias):
    import threading

    alias = make_alias(pool={"min_size": 0, "max_size": 4, "timeout": 10})

    def work():
        for _ in range(200):
            with connections[alias].cursor() as cursor:
                cursor.execute("SELECT 1")
            connections[alias].close()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ledger = get_pool(alias).ledger
    assert ledger.acquired_total == ledger.returned_total == 1600
    assert len(ledger) == 0
