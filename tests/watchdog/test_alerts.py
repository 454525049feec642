"""Pool alerts: sustained utilization, waiting, exhaustion and leaks raise a WARNING and
``pool_alert``, at most once per ``ALERT_REPEAT`` per alias and kind."""

from __future__ import annotations

import logging
import threading

import pytest
from django.db import connections

from django_poolguard import signals as poolguard_signals
from django_poolguard.exceptions import PoolExhausted
from django_poolguard.runtime import get_runtime
from tests.waiting import queue_waiters
from tests.watching import recording, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def quick_alerts(fast_watchdog, settings):
    settings.POOLGUARD = {
        **settings.POOLGUARD,
        "ALERT_UTILIZATION": 0.5,
        "ALERT_AFTER": 0.5,
        "ALERT_REPEAT": 60,
    }


def alert_logs(caplog, kind: str, alias: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.getMessage().startswith(f"Pool alert ({kind}): pool {alias!r}")
    ]


def test_sustained_utilization_alerts_once_naming_the_holders(make_alias, holders, caplog):
    alias = make_alias(pool={"min_size": 0, "max_size": 2, "timeout": 3})
    with recording(alias) as signals:
        holder = holders(alias, name="report-builder")
        get_runtime().watchdog.run_once(force=True)
        assert signals.of("pool_alert", kind="utilization") == [], "not sustained for ALERT_AFTER yet"

        alert = signals.wait("pool_alert", kind="utilization")
        assert "50%" in alert["message"] and "1/2 in use" in alert["message"]
        assert "held by thread report-builder" in alert["message"]
        assert "in Holder.hold_connection" in alert["message"]
        assert alert["state"]["in_use"] == 1 and alert["state"]["max"] == 2
        for _ in range(5):
            get_runtime().watchdog.run_once(force=True)
        assert len(signals.of("pool_alert", kind="utilization")) == 1, "rate-limited by ALERT_REPEAT"
        holder.release()
    assert len(alert_logs(caplog, "utilization", alias)) == 1


def test_waiting_and_exhaustion_alert(make_alias, holders, caplog):
    alias = make_alias(pool={"min_size": 0, "max_size": 1, "timeout": 1.5})
    holders(alias, name="long-report")
    failures = []

    def wait_for_a_connection() -> None:
        try:
            connections[alias].ensure_connection()
        except PoolExhausted as exc:
            failures.append(exc)
        finally:
            connections.close_all()

    with recording(alias) as signals:
        waiter = threading.Thread(target=wait_for_a_connection, name="queued-request")
        waiter.start()
        waiting = signals.wait("pool_alert", kind="waiting")
        assert (
            "1 request(s) waiting" in waiting["message"]
            and "held by thread long-report" in waiting["message"]
        )
        waiter.join(10)
        assert len(failures) == 1
        exhausted = signals.wait("pool_alert", kind="exhaustion")
    assert "1 checkout(s) timed out or were refused" in exhausted["message"]
    assert exhausted["state"]["timeouts_total"] == 1
    assert alert_logs(caplog, "waiting", alias) and alert_logs(caplog, "exhaustion", alias)


def test_refusals_by_a_full_wait_queue_raise_the_exhaustion_alert(make_alias, holders, caplog):
    # A timeout long enough that nothing times out: the refusal alone must raise the alert.
    alias = make_alias(pool={"min_size": 0, "max_size": 1, "timeout": 30, "max_waiting": 1})
    hog = holders(alias, name="slow-report")
    with recording(alias) as signals:
        [waiter] = queue_waiters(alias, 1, within=5)
        with pytest.raises(PoolExhausted) as refused:
            connections[alias].ensure_connection()
        assert refused.value.queue_full
        exhausted = signals.wait("pool_alert", kind="exhaustion")
    hog.release()
    waiter.join(10)
    assert "1 checkout(s) timed out or were refused" in exhausted["message"]
    assert "0 timeouts and 1 refusals by a full wait queue" in exhausted["message"]
    assert exhausted["state"]["rejected_total"] == 1 and exhausted["state"]["timeouts_total"] == 0
    assert alert_logs(caplog, "exhaustion", alias)


def test_leaks_alert_and_later_ones_are_summed_into_the_next_alert(make_alias, holders, settings):
    settings.POOLGUARD = {**settings.POOLGUARD, "ALERT_UTILIZATION": 1.0, "ALERT_REPEAT": 2.0}
    alias = make_alias(pool={"min_size": 0, "max_size": 3, "timeout": 3}, poolguard={"leak_threshold": 0.2})
    with recording(alias) as signals:
        holders(alias, name="first")
        first = signals.wait("pool_alert", kind="leak")
        assert "1 new suspected leak(s)" in first["message"]

        holders(alias, name="second")
        holders(alias, name="third")
        wait_until(lambda: len(signals.of("leak_detected")) == 3, what="three leak reports")
        assert len(signals.of("pool_alert", kind="leak")) == 1, "within ALERT_REPEAT of the first"

        wait_until(lambda: len(signals.of("pool_alert", kind="leak")) == 2, what="the next leak alert")
    second = signals.of("pool_alert", kind="leak")[1]
    assert "2 new suspected leak(s)" in second["message"]


def test_a_failing_receiver_is_logged_and_does_not_stop_the_others(make_alias, holders, caplog):
    alias = make_alias(pool={"min_size": 0, "max_size": 2, "timeout": 3}, poolguard={"leak_threshold": 0.2})

    def broken_pager(sender, **kwargs):
        raise RuntimeError("pager service down")

    poolguard_signals.pool_alert.connect(broken_pager)
    poolguard_signals.leak_detected.connect(broken_pager)
    try:
        with recording(alias) as signals:
            holders(alias, name="h")
            signals.wait("pool_alert", kind="leak")
            assert len(signals.of("leak_detected")) == 1
    finally:
        poolguard_signals.pool_alert.disconnect(broken_pager)
        poolguard_signals.leak_detected.disconnect(broken_pager)
    errors = [
        r for r in caplog.records if r.levelno == logging.ERROR and "pager service down" in r.getMessage()
    ]
    assert len(errors) >= 2
