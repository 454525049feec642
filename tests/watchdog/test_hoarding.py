"""Hoarding: a connection idle inside an open transaction past ``hoard_threshold`` is
reported (kind ``hoard``), naming the place where the transaction began."""

from __future__ import annotations

import inspect
import logging
import threading
import time

import pytest
from django.db import DataError, connections, transaction

import django_poolguard
from django_poolguard.models import LeakEvent
from django_poolguard.runtime import get_runtime
from tests.testapp.models import Item
from tests.watching import recording, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_watchdog")]


def book_and_call_payment_api(alias: str, seconds: float) -> None:
    with transaction.atomic(using=alias):  # the transaction begins here
        Item.objects.using(alias).create(name="order 1")
        time.sleep(seconds)  # stands for a slow HTTP call made inside the transaction


def line_of(function, marker: str) -> int:
    lines, first = inspect.getsourcelines(function)
    return first + next(i for i, line in enumerate(lines) if marker in line)


def in_thread(target, *args, name: str = "checkout-view") -> threading.Thread:
    thread = threading.Thread(target=lambda: (target(*args), connections.close_all()), name=name)
    thread.start()
    return thread


def test_transaction_held_across_a_sleep_is_reported_where_it_began(make_alias, caplog):
    alias = make_alias(
        pool={"min_size": 0, "max_size": 2, "timeout": 3},
        poolguard={"hoard_threshold": 0.3, "leak_threshold": 60},
    )
    began = (
        f"tests/watchdog/test_hoarding.py:{line_of(book_and_call_payment_api, 'the transaction begins here')}"
    )
    with recording(alias) as signals:
        thread = in_thread(book_and_call_payment_api, alias, 1.5)
        event = signals.wait("leak_detected", kind="hoard")["event"]

        assert event.origin == f"{began} in book_and_call_payment_api"
        assert event.stack[0] == event.origin
        assert event.thread == "checkout-view" and event.idle >= 0.3
        # The main thread is still served meanwhile.
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT count(*) FROM testapp_item")
            assert cursor.fetchone() == (0,), "the hoarded transaction is not committed yet"
        connections[alias].close()
        thread.join(10)

    [record] = [
        r for r in caplog.records if r.getMessage().startswith(f"Connection on {alias!r} idle in transaction")
    ]
    assert record.levelno == logging.WARNING
    assert f"the transaction began at {began} in book_and_call_payment_api" in record.getMessage()
    assert "thread checkout-view" in record.getMessage()
    assert len(signals.of("leak_detected", kind="hoard")) == 1, "one report per transaction"
    assert signals.of("leak_detected", kind="leak") == []
    assert django_poolguard.snapshot()[alias]["hoards_total"] == 1
    row = wait_until(lambda: LeakEvent.objects.filter(alias=alias, kind="hoard").first(), what="LeakEvent")
    assert row.stack.splitlines()[0] == event.origin and row.count == 1


def test_each_hoarding_transaction_is_reported_once(make_alias):
    alias = make_alias(pool={"min_size": 0, "max_size": 2, "timeout": 3}, poolguard={"hoard_threshold": 0.2})

    def two_slow_transactions() -> None:
        for _ in range(2):
            book_and_call_payment_api(alias, 1.2)

    with recording(alias) as signals:
        in_thread(two_slow_transactions).join(10)
        get_runtime().watchdog.run_once(force=True)
    hoards = signals.of("leak_detected", kind="hoard")
    assert len(hoards) == 2
    assert hoards[0]["event"].fingerprint == hoards[1]["event"].fingerprint


def test_a_failed_transaction_left_open_is_hoarding_too(make_alias):
    alias = make_alias(pool={"min_size": 0, "max_size": 2, "timeout": 3}, poolguard={"hoard_threshold": 0.3})

    def swallow_error_and_wait() -> None:
        with transaction.atomic(using=alias):  # the failed transaction begins here
            try:
                with connections[alias].cursor() as cursor:
                    cursor.execute("SELECT 1 / 0")
            except DataError:
                pass  # the transaction is aborted but still open, holding what it locked
            time.sleep(1.2)

    with recording(alias) as signals:
        in_thread(swallow_error_and_wait).join(10)
    [hoard] = signals.of("leak_detected", kind="hoard")
    began = line_of(swallow_error_and_wait, "the failed transaction begins here")
    assert hoard["event"].origin.startswith(f"tests/watchdog/test_hoarding.py:{began} in ")


def test_long_query_and_busy_transaction_are_not_hoarding(make_alias):
    alias = make_alias(pool={"min_size": 0, "max_size": 2, "timeout": 3}, poolguard={"hoard_threshold": 0.3})

    def slow_query_in_transaction() -> None:
        with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
            cursor.execute("SELECT pg_sleep(1)")  # working, not idle: PostgreSQL says "active"

    def many_quick_queries_in_transaction() -> None:
        with transaction.atomic(using=alias):
            for n in range(10):
                Item.objects.using(alias).create(name=f"item {n}")
                time.sleep(0.1)

    def idle_outside_a_transaction() -> None:
        Item.objects.using(alias).count()
        time.sleep(1)  # autocommit: nothing is locked while it waits

    with recording(alias) as signals:
        for target in (
            slow_query_in_transaction,
            many_quick_queries_in_transaction,
            idle_outside_a_transaction,
        ):
            in_thread(target).join(10)
        get_runtime().watchdog.run_once(force=True)
    assert signals.of("leak_detected", kind="hoard") == []
    assert django_poolguard.snapshot()[alias]["hoards_total"] == 0
