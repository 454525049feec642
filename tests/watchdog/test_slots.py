"""A checkout interrupted anywhere never costs the pool a connection for good.

The checkout path returns the connection on any ``BaseException`` before the ledger has it; the
slot check (``size == idle + in use + opening + returning``) recovers slots lost inside
psycopg_pool itself, and replaces a wedged pool.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

import psycopg_pool
import pytest
from django.db import connections
from psycopg_pool import ConnectionPool

from django_poolguard.engine.ledger import Ledger
from django_poolguard.engine.pool import GuardedPool, get_pool
from django_poolguard.watchdog import slots
from django_poolguard.web.health import health

pytestmark = pytest.mark.django_db(transaction=True)


def hold_all(alias: str, count: int, timeout: float = 10.0) -> list[object]:
    """Check out ``count`` connections at once, straight from the pool (each thread-free)."""
    pool = get_pool(alias)
    assert pool is not None
    return [pool.getconn(timeout) for _ in range(count)]


def open_pool(alias: str) -> GuardedPool:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")
    connections[alias].close()
    pool = get_pool(alias)
    assert pool is not None
    return pool


def wait_until(predicate, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


class Interrupted(BaseException):
    """Stands for what can strike between psycopg_pool and the ledger: a Celery soft time limit,
    Ctrl-C, a gevent timeout."""


def _interrupt_ledger_add(frame: Any, event: str, arg: Any) -> Any:
    # A trace function's exception propagates into the traced frame, as an asynchronous one would.
    if event == "call" and frame.f_code is Ledger.add.__code__:
        raise Interrupted
    return None


def test_an_error_while_recording_a_checkout_returns_the_connection(make_alias):
    alias = make_alias(pool={"min_size": 0, "max_size": 4, "timeout": 1})
    for _ in range(6):
        sys.settrace(_interrupt_ledger_add)
        try:
            with pytest.raises(Interrupted):
                connections[alias].ensure_connection()
        finally:
            sys.settrace(None)
        connections[alias].connection = None  # Django keeps nothing after a failed connect
    pool = get_pool(alias)
    held = hold_all(alias, 4, timeout=2)
    assert len(pool.ledger) == 4
    for connection in held:
        pool.putconn(connection)
    assert pool.get_stats()["pool_size"] <= 4


def test_a_slot_lost_inside_psycopg_pool_is_recovered(make_alias, caplog):
    caplog.set_level(logging.INFO, logger="django_poolguard")
    alias = make_alias(pool={"min_size": 2, "max_size": 2, "timeout": 1})
    pool = open_pool(alias)
    pool.wait(5)
    # What an exception inside psycopg_pool's getconn leaves behind: a connection taken out of the
    # pool that neither the ledger nor anybody else will ever return.
    lost = ConnectionPool.getconn(pool)
    lost._pool = None
    lost.close()
    del lost

    slots.check()
    slots.check()
    assert pool.ledger.invariant_violations_total >= 1
    assert "broke its slot invariant" in caplog.text and "1 of its 2 connections are lost" in caplog.text
    assert health()["aliases"][alias]["status"] == "critical"
    from prometheus_client import REGISTRY

    from django_poolguard.runtime import get_runtime

    get_runtime().exporter.export()
    assert REGISTRY.get_sample_value("poolguard_pool_invariant_violations_total", {"alias": alias}) >= 1
    held = hold_all(alias, 2, timeout=5)
    assert len(pool.ledger) == 2
    assert pool.get_stats()["pool_size"] == 2
    for connection in held:
        pool.putconn(connection)


def test_a_pool_that_lost_its_growing_task_grows_again(make_alias):
    alias = make_alias(pool={"min_size": 0, "max_size": 3, "timeout": 1})
    pool = open_pool(alias)
    with pool._lock:  # what an exception between "growing = True" and queueing the task leaves
        pool._nconns += 1
        pool._growing = True
    slots.check()
    slots.check()
    assert pool.ledger.invariant_violations_total == 1
    held = hold_all(alias, 3, timeout=5)
    assert pool.get_stats()["pool_size"] == 3
    for connection in held:
        pool.putconn(connection)


def test_a_pool_whose_lock_is_stuck_is_replaced(make_alias, caplog):
    caplog.set_level(logging.INFO, logger="django_poolguard")
    alias = make_alias(pool={"min_size": 1, "max_size": 2, "timeout": 1})
    pool = open_pool(alias)
    # A thread interrupted while holding the pool's lock never releases it (here: until the end).
    taken, give_back = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        with pool._lock:
            taken.set()
            give_back.wait(30)

    stuck = threading.Thread(target=hold_the_lock, daemon=True)
    stuck.start()
    assert taken.wait(5)
    slots.check()
    slots.check()
    fresh = get_pool(alias)
    assert fresh is not None and fresh is not pool
    assert "Replaced the pool of" in caplog.text and "its lock has stayed taken" in caplog.text
    assert health()["aliases"][alias]["status"] == "critical"
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")
    connections[alias].close()
    assert fresh.ledger.invariant_violations_total == 1
    give_back.set()  # now the background close can end the old pool's sessions
    assert wait_until(lambda: pool.closed and not pool._pool)


def test_a_busy_healthy_pool_never_breaks_the_invariant(make_alias):
    alias = make_alias(pool={"min_size": 1, "max_size": 3, "timeout": 5})
    pool = open_pool(alias)
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            while not stop.is_set():
                with connections[alias].cursor() as cursor:
                    cursor.execute("SELECT 1")
                connections[alias].close()
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connections[alias].close()

    threads = [threading.Thread(target=churn, daemon=True) for _ in range(6)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 4
    checks = 0
    while time.monotonic() < deadline:
        slots.check()
        checks += 1
        time.sleep(0.01)
    stop.set()
    for thread in threads:
        thread.join(10)
    assert not errors
    assert pool.ledger.acquired_total > 500, "the pool was not busy"
    assert checks > 20
    assert pool.ledger.invariant_violations_total == 0
    assert get_pool(alias) is pool


def test_a_connection_its_wrapper_let_go_of_is_reclaimed(make_alias, fast_watchdog):
    from django_poolguard.watchdog import leaks

    alias = make_alias(pool={"min_size": 0, "max_size": 2, "timeout": 1})
    wrapper = connections[alias]
    wrapper.ensure_connection()
    pool = get_pool(alias)
    # What BaseDatabaseWrapper.close() leaves when an exception strikes inside _close() before the
    # connection went back: its finally clause clears the attribute anyway.
    wrapper.connection = None
    leaks.scan()
    leaks.scan()
    assert pool.ledger.reclaimed_by_reason == {"connection_dropped": 1}
    held = hold_all(alias, 2, timeout=2)
    for connection in held:
        pool.putconn(connection)


def test_a_wrapper_holding_its_connection_is_left_alone(make_alias, fast_watchdog):
    from django_poolguard.watchdog import leaks

    alias = make_alias(pool={"min_size": 0, "max_size": 2, "timeout": 1})
    connections[alias].ensure_connection()
    pool = get_pool(alias)
    for _ in range(3):
        leaks.scan()
    assert pool.ledger.reclaimed_total == 0 and len(pool.ledger) == 1
    connections[alias].close()


def test_a_pool_that_stops_handing_out_idle_connections_is_replaced(make_alias, caplog):
    from psycopg_pool.pool import WaitingClient

    caplog.set_level(logging.INFO, logger="django_poolguard")
    alias = make_alias(pool={"min_size": 1, "max_size": 1, "timeout": 1})
    pool = open_pool(alias)
    pool.wait(5)
    # A client queued while the pool holds an idle connection it never hands over: what a pool whose
    # hand-over was broken mid-way looks like from outside.
    client: WaitingClient = WaitingClient()
    with pool._lock:
        pool._waiting.append(client)
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            client.wait(10)
        except psycopg_pool.PoolClosed as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    assert wait_until(lambda: pool.waiting() == 1 and client._cond._waiters)
    for _ in range(3):
        slots.check()
    assert get_pool(alias) is not pool
    assert "not one checkout succeeded" in caplog.text and "1 idle connection(s)" in caplog.text
    waiter.join(5)
    assert not waiter.is_alive() and errors, "closing the replaced pool failed its waiting client"


def test_a_queued_client_nobody_waits_on_is_taken_off_the_queue(make_alias, caplog):
    from psycopg_pool.pool import WaitingClient

    caplog.set_level(logging.INFO, logger="django_poolguard")
    alias = make_alias(pool={"min_size": 0, "max_size": 1, "timeout": 1})
    pool = open_pool(alias)
    held = pool.getconn(2)
    # What an exception striking a checkout after psycopg_pool queued it (outside the wait) leaves.
    abandoned: WaitingClient = WaitingClient()
    with pool._lock:
        pool._waiting.append(abandoned)
    slots.check()
    time.sleep(slots.ABANDONED_AFTER)
    slots.check()
    assert abandoned.error is not None and abandoned.conn is None
    assert "queued checkout(s) were abandoned" in caplog.text
    assert pool.ledger.invariant_violations_total == 1
    pool.putconn(held)  # goes back to the pool, not to the abandoned client
    again = pool.getconn(1)
    pool.putconn(again)
