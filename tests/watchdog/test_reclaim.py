"""Dead-holder reclaim: a connection whose thread exited or whose Django wrapper was
garbage-collected goes back to the pool, so a dead holder never shrinks it."""

from __future__ import annotations

import gc
import threading

import pytest
from django.db import connections

import django_poolguard
from django_poolguard.exceptions import PoolExhausted
from django_poolguard.models import LeakEvent
from django_poolguard.runtime import get_runtime
from tests.watching import recording, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_watchdog")]


def count_orders(alias: str) -> None:
    """Runs one query and exits without closing: Django's own pool loses this slot forever."""
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")


def run_and_exit(alias: str, name: str) -> None:
    thread = threading.Thread(target=count_orders, args=(alias,), name=name)
    thread.start()
    thread.join()


def query(alias: str) -> int:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 42")
        (value,) = cursor.fetchone()
    connections[alias].close()
    return value


def test_three_dead_threads_do_not_kill_a_pool_of_three(make_alias, caplog):
    alias = make_alias(pool={"min_size": 0, "max_size": 3, "timeout": 5})
    with recording(alias) as signals:
        for n in range(3):
            run_and_exit(alias, f"worker-{n}")

        # A fourth caller is served: the watchdog gives the dead threads' slots back.
        assert query(alias) == 42
        wait_until(lambda: len(signals.of("connection_reclaimed")) == 3, what="three reclaims")

    reclaimed = signals.of("connection_reclaimed")
    assert {r["event"].thread for r in reclaimed} == {"worker-0", "worker-1", "worker-2"}
    assert {r["reason"] for r in reclaimed} == {"thread_exited"}
    assert all(r["event"].origin.endswith("in count_orders") for r in reclaimed)
    assert all(r["event"].origin.startswith("tests/watchdog/test_reclaim.py:") for r in reclaimed)
    logged = [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith(f"Reclaimed a connection on {alias!r}")
    ]
    assert len(logged) == 3
    assert all("in count_orders" in m and "the thread exited without returning it" in m for m in logged)

    state = django_poolguard.snapshot()[alias]
    assert state["reclaimed_total"] == 3
    assert state["reclaimed_by_reason"] == {"thread_exited": 3}
    assert state["in_use"] == 0
    # One place in the code, one row, counted three times.
    row = wait_until(
        lambda: LeakEvent.objects.filter(alias=alias, kind="reclaimed", count=3).first(), what="LeakEvent"
    )
    assert row.stack.splitlines()[0].endswith("in count_orders")
    # All three slots are usable again at once.
    holders = [
        threading.Thread(target=lambda: (count_orders(alias), connections.close_all())) for _ in range(3)
    ]
    for thread in holders:
        thread.start()
    for thread in holders:
        thread.join()
    assert django_poolguard.snapshot()[alias]["reclaimed_total"] == 3, "closed connections are not reclaimed"


def test_without_reclaim_dead_threads_exhaust_the_pool(make_alias, settings):
    settings.POOLGUARD = {**settings.POOLGUARD, "MONITOR_INTERVAL": 0.1, "RECLAIM_DEAD_THREADS": False}
    alias = make_alias(pool={"min_size": 0, "max_size": 2, "timeout": 0.5})
    for n in range(2):
        run_and_exit(alias, f"worker-{n}")
    get_runtime().watchdog.run_once(force=True)
    with pytest.raises(PoolExhausted) as excinfo:
        query(alias)
    # The error still names the dead holders and the place that leaked.
    assert "thread worker-" in str(excinfo.value) and "in count_orders" in str(excinfo.value)
    assert django_poolguard.snapshot()[alias]["reclaimed_total"] == 0
    connections[alias].close()


def test_garbage_collected_wrapper_is_reclaimed(make_alias):
    alias = make_alias(pool={"min_size": 0, "max_size": 1, "timeout": 5})
    assert query(alias) == 42  # the pool now exists (it keeps the wrapper that built it, as Django's does)
    with recording(alias) as signals:
        wrapper = connections.create_connection(alias)  # not stored in `connections`: ours to drop
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT 1")
        del wrapper, cursor
        gc.collect()

        # The only slot comes back although this (alive) thread never returned it.
        assert query(alias) == 42
        event = signals.wait("connection_reclaimed")["event"]

    assert event.reason == "wrapper_collected"
    assert event.thread == threading.current_thread().name and event.thread_alive
    assert event.origin.endswith("in test_garbage_collected_wrapper_is_reclaimed")
    assert django_poolguard.snapshot()[alias]["reclaimed_by_reason"] == {"wrapper_collected": 1}


def test_a_dead_threads_surviving_wrapper_never_touches_the_reclaimed_connection(make_alias):
    alias = make_alias(pool={"min_size": 0, "max_size": 1, "timeout": 5})
    kept = {}

    def query_in_atomic_and_die() -> None:
        wrapper = connections[alias]
        wrapper.set_autocommit(False)  # dies inside a transaction
        with wrapper.cursor() as cursor:
            cursor.execute("CREATE TEMPORARY TABLE scratch (id int)")
        kept["wrapper"] = wrapper  # someone keeps the object alive

    thread = threading.Thread(target=query_in_atomic_and_die, name="dying")
    thread.start()
    thread.join()
    wrapper = kept["wrapper"]
    dead_connection = wrapper.connection
    with recording(alias) as signals:
        signals.wait("connection_reclaimed")

    assert wrapper.connection is None, "the surviving wrapper must forget the reclaimed connection"
    assert wrapper.in_atomic_block is False and wrapper._guard_checkout is None
    # The slot serves the next caller, rolled back: the dead thread's transaction is gone.
    with connections[alias].cursor() as cursor:
        assert connections[alias].connection is dead_connection  # the same physical connection, reused
        cursor.execute("SELECT to_regclass('pg_temp.scratch') IS NULL")
        assert cursor.fetchone() == (True,)
    connections[alias].close()


def test_shared_wrapper_is_not_reclaimed_when_its_creator_exits(make_alias):
    alias = make_alias(pool={"min_size": 0, "max_size": 2, "timeout": 5})
    kept = {}

    def open_shared() -> None:
        wrapper = connections[alias]
        wrapper.inc_thread_sharing()  # as LiveServerTestCase does: other threads use it
        wrapper.ensure_connection()
        kept["wrapper"] = wrapper

    thread = threading.Thread(target=open_shared, name="creator")
    thread.start()
    thread.join()
    for _ in range(3):
        get_runtime().watchdog.run_once(force=True)
    wrapper = kept["wrapper"]
    assert wrapper.connection is not None
    assert django_poolguard.snapshot()[alias]["reclaimed_total"] == 0
    with wrapper.cursor() as cursor:  # still usable from this thread
        cursor.execute("SELECT 1")
    wrapper.close()
    wrapper.dec_thread_sharing()
