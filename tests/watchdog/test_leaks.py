"""Leak detection: checkouts held past ``leak_threshold`` are reported once (log, signal,
LeakEvent row) with holder, context and the application frame that took them, and a
late return is reported as "unleaked"."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.core.management import call_command
from django.db import connections

import django_poolguard
from django_poolguard.models import LeakEvent
from django_poolguard.runtime import get_runtime
from tests.watching import recording, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_watchdog")]

ROOT = Path(__file__).resolve().parents[2]


def load_report_rows(alias: str) -> None:
    """Queries and forgets ``connections[alias].close()``: the classic thread-pool leak."""
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")


def messages(caplog, text: str, alias: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage() and repr(alias) in r.getMessage()]


def query_on_main_thread(alias: str) -> int:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 42")
        (value,) = cursor.fetchone()
    connections[alias].close()
    return value


def test_thread_pool_worker_that_never_closes_is_reported_once(make_alias, caplog):
    alias = make_alias(pool={"min_size": 0, "max_size": 2, "timeout": 3}, poolguard={"leak_threshold": 0.3})
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="report-pool")
    with recording(alias) as signals:
        try:
            executor.submit(load_report_rows, alias).result()
            event = signals.wait("leak_detected", kind="leak")["event"]

            assert event.thread.startswith("report-pool") and event.thread_alive
            assert event.held >= 0.3
            assert event.origin.startswith("tests/watchdog/test_leaks.py:") and event.origin.endswith(
                "in load_report_rows"
            )
            assert event.context == f"thread {event.thread}"
            [record] = messages(caplog, "Connection leak suspected", alias)
            assert record.levelno == logging.WARNING
            text = record.getMessage()
            assert (
                event.thread in text
                and "tests/watchdog/test_leaks.py:" in text
                and "in load_report_rows" in text
            )
            # The acquire stack is in the message, application frames first.
            stack_lines = text.split("application frames first):\n", 1)[1].splitlines()
            assert stack_lines[0].strip() == event.origin

            row = wait_until(
                lambda: LeakEvent.objects.filter(alias=alias, kind="leak").first(), what="LeakEvent"
            )
            assert (row.count, row.resolved, row.thread, row.pid) == (1, False, event.thread, os.getpid())
            assert row.stack.splitlines()[0] == event.origin
            assert row.fingerprint == event.fingerprint and row.held_seconds >= 0.3

            # Reported once, not on every scan; the snapshot counts it as active.
            for _ in range(3):
                get_runtime().watchdog.run_once(force=True)
            assert len(signals.of("leak_detected", kind="leak")) == 1
            state = django_poolguard.snapshot()[alias]
            assert (state["leaks_active"], state["leaks_total"]) == (1, 1)

            # The rest of the pool keeps serving the main thread.
            assert query_on_main_thread(alias) == 42
        finally:
            executor.shutdown(wait=True)

        # The worker thread has exited: its connection is reclaimed, not resolved.
        reclaimed = signals.wait("connection_reclaimed")
        assert reclaimed["reason"] == "thread_exited"
        assert signals.of("leak_resolved") == []
        assert django_poolguard.snapshot()[alias]["leaks_active"] == 0


def test_long_holder_that_returns_later_is_reported_unleaked(make_alias, holders, caplog):
    alias = make_alias(pool={"min_size": 0, "max_size": 2, "timeout": 3}, poolguard={"leak_threshold": 0.3})
    with recording(alias) as signals:
        holder = holders(alias, name="nightly-export")
        detected = signals.wait("leak_detected", kind="leak")["event"]
        assert detected.thread == "nightly-export"
        assert detected.origin.startswith("tests/conftest.py:") and detected.origin.endswith(
            "in Holder.hold_connection"
        )
        assert query_on_main_thread(alias) == 42

        holder.release()  # closes its connection: slow, not leaked
        resolved = signals.wait("leak_resolved")
        assert resolved["event"] == detected
        assert resolved["held"] >= detected.held

    [info] = messages(caplog, "(unleaked)", alias)
    assert info.levelno == logging.INFO
    assert "nightly-export" in info.getMessage() and "returned after" in info.getMessage()
    assert "in Holder.hold_connection" in info.getMessage()
    state = django_poolguard.snapshot()[alias]
    assert (state["leaks_active"], state["leaks_total"], state["in_use"]) == (0, 1, 0)
    # The history keeps the occurrence: "resolved" is for people to set once the code is fixed.
    row = wait_until(lambda: LeakEvent.objects.filter(alias=alias, kind="leak").first(), what="LeakEvent")
    assert (row.count, row.resolved) == (1, False)


def test_same_place_is_one_row_with_a_count_and_a_regression_reopens_it(make_alias):
    alias = make_alias(pool={"min_size": 0, "max_size": 3, "timeout": 3}, poolguard={"leak_threshold": 0.2})

    def leak_once(expected_count: int) -> LeakEvent:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="report-pool")
        with recording(alias) as signals:
            executor.submit(load_report_rows, alias).result()
            signals.wait("leak_detected", kind="leak")
        executor.submit(connections.close_all).result()  # the worker returns it in the end
        executor.shutdown(wait=True)
        return wait_until(
            lambda: LeakEvent.objects.filter(alias=alias, kind="leak", count=expected_count).first(),
            what=f"a LeakEvent with count={expected_count}",
        )

    leak_once(1)
    row = leak_once(2)  # another thread, the same line of code: the same row
    first_seen = row.first_seen

    LeakEvent.objects.filter(pk=row.pk).update(resolved=True)
    row = leak_once(3)
    assert (row.resolved, row.first_seen) == (False, first_seen), "a new occurrence reopens a resolved place"
    assert row.last_seen > first_seen
    assert LeakEvent.objects.filter(alias=alias).count() == 1


def test_leak_inside_a_request_is_reported_with_its_path(make_alias, client, settings, caplog):
    settings.ROOT_URLCONF = "tests.leak_views"
    settings.MIDDLEWARE = ["tests.leak_views.checkout_context_middleware", *settings.MIDDLEWARE]
    alias = make_alias(pool={"min_size": 0, "max_size": 2, "timeout": 3}, poolguard={"leak_threshold": 0.3})
    with recording(alias) as signals:
        response = client.get(f"/report/{alias}/", {"hold": "1.0"})
        assert response.status_code == 200
        event = signals.wait("leak_detected", kind="leak")["event"]

    assert event.context == f"GET /report/{alias}/"
    assert event.origin.startswith("tests/leak_views.py:") and event.origin.endswith("in slow_report")
    [record] = messages(caplog, "Connection leak suspected", alias)
    assert f"for GET /report/{alias}/" in record.getMessage()
    row = wait_until(lambda: LeakEvent.objects.filter(alias=alias, kind="leak").first(), what="LeakEvent")
    assert row.context == f"GET /report/{alias}/"
    connections[alias].close()  # the test client keeps the request's connections open
    assert query_on_main_thread(alias) == 42


@pytest.mark.slow
def test_leak_inside_a_management_command_is_reported_with_the_command():
    """A real ``django-admin export_rows`` process, whose watchdog writes to the test database."""
    django_admin = Path(sys.executable).with_name("django-admin")
    if not django_admin.exists():
        pytest.skip(f"no django-admin script next to {sys.executable}")
    url = urlsplit(os.environ["DATABASE_URL"])
    test_db_url = urlunsplit(url._replace(path="/" + connections["default"].settings_dict["NAME"]))
    env = {
        **os.environ,
        "DATABASE_URL": test_db_url,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [str(django_admin), "export_rows", "--hold", "1.5", "--settings", "tests.settings_leaky_command"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Connection leak suspected")]
    assert len(warnings) == 1, result.stderr
    assert "for command export_rows" in warnings[0]
    assert "tests/testapp/management/commands/export_rows.py:" in warnings[0]
    assert "in Command.export_rows" in warnings[0]
    assert "(unleaked)" in result.stderr

    row = LeakEvent.objects.get(alias="default", kind="leak", context="command export_rows")
    assert row.count == 1 and row.workload == "web"
    assert row.stack.splitlines()[0].endswith("in Command.export_rows")


class LeakEventsToAlias:
    """Routes LeakEvent writes to the alias in ``target``."""

    target = "default"

    def db_for_write(self, model, **hints):
        return self.target if model is LeakEvent else None


def test_a_failed_leak_event_write_is_logged_and_never_raised(make_alias, settings, caplog):
    broken = make_alias(NAME="poolguard_no_such_database")
    LeakEventsToAlias.target = broken
    settings.DATABASE_ROUTERS = ["tests.watchdog.test_leaks.LeakEventsToAlias"]
    alias = make_alias(pool={"min_size": 0, "max_size": 1, "timeout": 5}, poolguard={"leak_threshold": 0.2})
    with recording(alias) as signals:
        thread = threading.Thread(target=load_report_rows, args=(alias,), name="doomed")
        thread.start()
        thread.join()
        # The report, the reclaim and the pool all work although the history cannot be written.
        assert query_on_main_thread(alias) == 42
        signals.wait("connection_reclaimed")
    failures = wait_until(
        lambda: [r for r in caplog.records if r.getMessage().startswith("poolguard could not write")],
        what="the logged write failure",
    )
    assert failures[0].levelno == logging.WARNING
    assert repr(broken) in failures[0].getMessage() and "retries in 30 s" in failures[0].getMessage()
    assert "password" not in failures[0].getMessage().lower()
    assert not LeakEvent.objects.filter(alias=alias).exists()


def test_leak_event_is_written_while_its_database_pool_is_exhausted(make_alias, holders, settings):
    alias = make_alias(pool={"min_size": 0, "max_size": 1, "timeout": 1}, poolguard={"leak_threshold": 0.2})
    LeakEventsToAlias.target = alias  # the very alias whose only connection is held
    settings.DATABASE_ROUTERS = ["tests.watchdog.test_leaks.LeakEventsToAlias"]
    holders(alias, name="hog")
    assert django_poolguard.snapshot()[alias]["idle"] == 0

    row = wait_until(lambda: LeakEvent.objects.filter(alias=alias, kind="leak").first(), what="LeakEvent")
    assert row.thread == "hog"
    state = django_poolguard.snapshot()[alias]
    assert (state["in_use"], state["max"], state["acquired_total"]) == (1, 1, 1), "written outside the pool"


def test_poolstats_leaks_lists_the_recorded_leak(make_alias, holders):
    alias = make_alias(pool={"min_size": 0, "max_size": 2, "timeout": 3}, poolguard={"leak_threshold": 0.2})
    holders(alias, name="nightly-export")
    wait_until(lambda: LeakEvent.objects.filter(alias=alias, kind="leak").exists(), what="LeakEvent")

    out = io.StringIO()
    call_command("poolstats", "--leaks", "--json", stdout=out)
    [event] = [e for e in json.loads(out.getvalue())["leak_events"] if e["alias"] == alias]
    assert (event["kind"], event["thread"], event["count"]) == ("leak", "nightly-export", 1)
    assert event["stack"].splitlines()[0].endswith("in Holder.hold_connection")
