"""Canaries: one test per internal of Django and psycopg_pool that poolguard relies on.

Each fails with the internal's name, what poolguard needs it for and the versions it was checked on
(``django_poolguard._compat.INTERNALS``), so an upgrade that changes one is caught here, not in
production.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import psycopg
import psycopg_pool
import pytest
from django.db import connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.http import HttpResponse
from django.test import RequestFactory
from django.utils.log import log_response
from psycopg_pool import ConnectionPool, PoolTimeout

from django_poolguard import _compat
from django_poolguard._compat import (
    CONNECT_CONFIGURATION,
    INTERNALS,
    OVERRIDDEN_HOOKS,
    WRAPPER_CONFIGURATION,
    WRAPPER_CONNECTION_STATE,
    AddConnection,
    MaintenanceTask,
    ReturnConnection,
    WaitingClient,
)
from django_poolguard.backends.postgresql.base import DatabaseWrapper
from django_poolguard.engine.pool import GuardedPool, PrioritizedPool, get_pool

pytestmark = pytest.mark.django_db(transaction=True)

CANARIES: set[str] = set()


def canary(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Marks the test guarding ``_compat.INTERNALS[name]``."""

    def mark(test: Callable[..., Any]) -> Callable[..., Any]:
        CANARIES.add(name)
        return test

    return mark


def changed(name: str, what: str) -> str:
    internal = INTERNALS[name]
    return (
        f"{internal.name} changed: {what}. poolguard relies on it because {internal.why}; checked on "
        f"{internal.checked_on}. Update django_poolguard/_compat.py ({name}) for this version."
    )


def open_pool(alias: str) -> GuardedPool:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")
    connections[alias].close()
    pool = get_pool(alias)
    assert pool is not None
    return pool


def wait_until(predicate: Callable[[], Any], within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


def wait_in_vain(pool: GuardedPool, timeout: float) -> None:
    with pytest.raises(PoolTimeout):
        pool.getconn(timeout)


class _Nothing(MaintenanceTask):
    def _run(self, pool: Any) -> None:
        pass


def test_every_internal_has_its_canary():
    # The canaries register at import: this module is fully imported before any test runs.
    assert set(INTERNALS) == CANARIES, (
        f"internals without a canary: {sorted(set(INTERNALS) - CANARIES)}; "
        f"canaries for nothing: {sorted(CANARIES - set(INTERNALS))}"
    )


# --- psycopg_pool ---------------------------------------------------------------------------


@canary("AddConnection")
def test_maintenance_tasks(make_alias):
    alias = make_alias(pool={"min_size": 0, "max_size": 1, "timeout": 2})
    pool = open_pool(alias)
    for task_class in (AddConnection, ReturnConnection):
        assert issubclass(task_class, MaintenanceTask), changed("AddConnection", f"{task_class} is no task")
    assert "growing" in inspect.signature(AddConnection).parameters, changed(
        "AddConnection", "AddConnection takes no growing flag"
    )
    task = _Nothing(pool)
    assert task.pool() is pool, changed("AddConnection", "a task's .pool is no weak reference to its pool")


@canary("waiting_clients")
def test_waiting_clients(make_alias):
    alias = make_alias(pool={"min_size": 0, "max_size": 1, "timeout": 2})
    pool = open_pool(alias)
    held = pool.getconn(2)
    waiter = threading.Thread(target=wait_in_vain, args=(pool, 0.3))
    waiter.start()
    try:
        assert wait_until(lambda: len(_compat.waiting_clients(pool)) == 1, 5), changed(
            "waiting_clients", "a thread waiting in getconn() is not in the queue"
        )
        waiter.join(5)
        # Timed out: psycopg_pool still counts it in get_stats(), poolguard no longer does.
        assert _compat.waiting_clients(pool) == [], changed(
            "waiting_clients", "a timed-out client looks served"
        )
        assert pool.get_stats().get("requests_waiting") == 1
    finally:
        pool.putconn(held)


@canary("has_sleeper")
def test_has_sleeper(make_alias):
    alias = make_alias(pool={"min_size": 0, "max_size": 1, "timeout": 2})
    pool = open_pool(alias)
    held = pool.getconn(2)
    waiter = threading.Thread(target=wait_in_vain, args=(pool, 1))
    waiter.start()
    try:
        assert wait_until(lambda: _compat.waiting_clients(pool), 5)
        client = _compat.waiting_clients(pool)[0]
        assert wait_until(lambda: _compat.has_sleeper(client), 5), changed(
            "has_sleeper", "a client a thread waits on shows no waiter"
        )
        assert not _compat.has_sleeper(WaitingClient()), changed(
            "has_sleeper", "a client nobody waits on shows a waiter"
        )
    finally:
        waiter.join(5)
        pool.putconn(held)


@canary("fail_client")
def test_fail_client():
    client: WaitingClient[Any] = WaitingClient()
    _compat.fail_client(client, PoolTimeout("abandoned"))
    assert isinstance(client.error, PoolTimeout), changed("fail_client", "fail() does not record the error")
    assert client.set(object()) is False, changed("fail_client", "a failed client still takes a connection")


@canary("client_pending")
def test_client_pending():
    served: WaitingClient[Any] = WaitingClient()
    assert _compat.client_pending(served), changed("client_pending", "a new client looks served or failed")
    connection = object()
    assert _compat.hand_connection(served, connection) is True, changed(
        "client_pending", "a waiting client refused a connection"
    )
    assert served.conn is connection and not _compat.client_pending(served), changed(
        "client_pending", "a served client still looks pending"
    )
    assert _compat.hand_connection(served, object()) is False, changed(
        "client_pending", "a served client took a second connection"
    )
    failed: WaitingClient[Any] = WaitingClient()
    _compat.fail_client(failed, PoolTimeout("timed out"))
    assert not _compat.client_pending(failed), changed(
        "client_pending", "a failed client still looks pending"
    )


class _NotingQueue(deque):  # type: ignore[type-arg]
    """Records what psycopg_pool does to its waiting queue."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def append(self, client: Any) -> None:
        self.calls.append("append")
        super().append(client)

    def popleft(self) -> Any:
        self.calls.append("popleft")
        return super().popleft()

    def clear(self) -> None:
        self.calls.append("clear")
        super().clear()


@canary("waiting_queue")
def test_waiting_queue(make_alias):
    alias = make_alias(pool={"min_size": 0, "max_size": 1, "timeout": 2})
    pool = open_pool(alias)
    queue = _NotingQueue()
    _compat.install_waiting_queue(pool, queue)
    assert _compat.waiting_queue(pool) is queue
    held = pool.getconn(2)
    taken: list[Any] = []
    waiter = threading.Thread(target=lambda: taken.append(pool.getconn(5)))
    waiter.start()
    assert wait_until(lambda: len(queue) == 1, 5), changed(
        "waiting_queue", "a waiting checkout did not go through the pool's _waiting.append()"
    )
    assert pool.get_stats()["requests_waiting"] == 1, changed(
        "waiting_queue", "get_stats() ignores the queue"
    )
    pool.putconn(held)
    waiter.join(5)
    assert taken and queue.calls == ["append", "popleft"], changed(
        "waiting_queue", f"a returned connection reached the waiter by {queue.calls}"
    )
    pool.putconn(taken[0])
    pool.close(timeout=1)
    assert queue.calls[-1] == "clear", changed("waiting_queue", "close() does not clear the queue")


@canary("free_connections")
def test_free_connections(make_alias):
    alias = make_alias(pool={"min_size": 1, "max_size": 3, "timeout": 2})
    pool = open_pool(alias)
    assert wait_until(lambda: pool.get_stats()["pool_available"] == pool.get_stats()["pool_size"], 5)
    with _compat.pool_lock(pool):
        stats = pool.get_stats()
        assert _compat.free_connections(pool) == 3 == stats["pool_available"] + 3 - stats["pool_size"], (
            changed("free_connections", f"an idle pool is not all free ({stats})")
        )
    held = [pool.getconn(2) for _ in range(3)]
    with _compat.pool_lock(pool):
        assert _compat.free_connections(pool) == 0, changed("free_connections", "a full pool has some free")
    for connection in held:
        pool.putconn(connection)


@canary("count_request_error")
def test_count_request_error(make_alias):
    alias = make_alias(pool={"min_size": 0, "max_size": 1, "timeout": 2})
    pool = open_pool(alias)
    before = pool.get_stats().get("requests_errors", 0)
    with _compat.pool_lock(pool):
        _compat.count_request_error(pool)
    assert pool.get_stats().get("requests_errors", 0) == before + 1, changed(
        "count_request_error", "get_stats() does not report the counted error"
    )


@canary("add_to_pool_handing")
def test_add_to_pool_handing(make_alias):
    alias = make_alias(pool={"min_size": 0, "max_size": 1, "timeout": 2})
    pool = open_pool(alias)
    calls: list[tuple[Any, bool]] = []

    def locked_elsewhere(lock: Any) -> bool:  # psycopg_pool's lock is reentrant: ask another thread
        free: list[bool] = []

        def probe() -> None:
            free.append(lock.acquire(blocking=False))
            if free[0]:
                lock.release()

        prober = threading.Thread(target=probe)
        prober.start()
        prober.join(5)
        return free == [False]

    def hand_to_waiter(pool: Any, connection: Any) -> bool:
        calls.append((connection, locked_elsewhere(_compat.pool_lock(pool))))
        return any(_compat.hand_connection(client, connection) for client in _compat.waiting_clients(pool))

    add_to_pool = _compat.add_to_pool_handing(hand_to_waiter)
    # Nobody waiting: the connection stays idle, detached from its pool, and is handed out again.
    connection = ConnectionPool.getconn(pool, 2)  # psycopg_pool's own: no ledger entry to settle
    assert _compat.connection_pool(connection) is pool
    add_to_pool(pool, connection)
    assert not calls, changed("add_to_pool_handing", "asked for a waiter while none waited")
    assert _compat.connection_pool(connection) is None, changed(
        "add_to_pool_handing", "the idle connection kept its pool"
    )
    assert pool.get_stats()["pool_available"] == 1, changed(
        "add_to_pool_handing", "the idle connection was not counted"
    )
    again = ConnectionPool.getconn(pool, 2)
    assert again is connection, changed("add_to_pool_handing", "the pool handed out another connection")
    # A client waiting: the connection goes where hand_to_waiter says, under the pool's lock.
    taken: list[Any] = []
    waiter = threading.Thread(target=lambda: taken.append(ConnectionPool.getconn(pool, 5)))
    waiter.start()
    assert wait_until(lambda: len(_compat.waiting_clients(pool)) == 1, 5)
    add_to_pool(pool, again)
    waiter.join(5)
    assert calls == [(again, True)], changed("add_to_pool_handing", f"the waiter was chosen by {calls}")
    assert taken == [again], changed("add_to_pool_handing", "the chosen waiter did not get the connection")
    assert pool.get_stats()["pool_available"] == 0, changed(
        "add_to_pool_handing", "a connection handed to a waiter also stayed idle"
    )
    # A closed pool closes what comes back.
    pool.close(timeout=1)
    add_to_pool(pool, again)
    assert again.closed, changed("add_to_pool_handing", "a closed pool kept a returned connection open")


@canary("idle_queue")
def test_idle_queue(make_alias):
    alias = make_alias(pool={"min_size": 2, "max_size": 2, "timeout": 2})
    pool = open_pool(alias)
    pool.wait(5)
    idle = _compat.idle_queue(pool)
    assert len(idle) == pool.get_stats()["pool_available"] == 2, changed(
        "idle_queue", "its length is not the idle connections"
    )
    held = [pool.getconn(2) for _ in range(2)]
    assert len(idle) == 0, changed("idle_queue", "checked-out connections still counted idle")
    for connection in held:
        pool.putconn(connection)
    assert wait_until(lambda: len(idle) == 2, 5), changed("idle_queue", "returned connections not counted")
    pool.close(timeout=1)
    assert _compat.idle_queue(pool) is idle and len(idle) == 0, changed(
        "idle_queue", "the pool replaced its deque of idle connections"
    )


@canary("idle_connections")
def test_idle_connections(make_alias):
    alias = make_alias(pool={"min_size": 2, "max_size": 2, "timeout": 2})
    pool = open_pool(alias)
    pool.wait(5)
    idle = _compat.idle_connections(pool)
    assert len(idle) == pool.get_stats()["pool_available"] == 2, changed("idle_connections", f"saw {idle}")
    assert all(isinstance(connection, psycopg.Connection) for connection in idle)


@canary("pool_lock")
def test_pool_lock(make_alias):
    alias = make_alias(pool={"min_size": 1, "max_size": 1, "timeout": 2})
    pool = open_pool(alias)
    taken: list[Any] = []
    checkout = threading.Thread(target=lambda: taken.append(pool.getconn(5)))
    with _compat.pool_lock(pool):
        checkout.start()
        time.sleep(0.3)
        assert not taken, changed("pool_lock", "a checkout went through while the lock was held")
    checkout.join(5)
    assert taken, "the checkout never went through once the lock was released"
    pool.putconn(taken[0])


@canary("task_queue_lock")
def test_task_queue_lock(make_alias):
    alias = make_alias(pool={"min_size": 0, "max_size": 1, "timeout": 2})
    pool = open_pool(alias)
    queued = threading.Event()

    def submit() -> None:
        pool.run_task(_Nothing(pool))
        queued.set()

    submitter = threading.Thread(target=submit)
    with _compat.task_queue_lock(pool):
        submitter.start()
        assert not queued.wait(0.3), changed("task_queue_lock", "a task was queued while its lock was held")
    assert queued.wait(5)
    submitter.join(5)


@canary("pool_growing")
def test_pool_growing(make_alias):
    alias = make_alias(pool={"min_size": 0, "max_size": 2, "timeout": 2})
    pool = open_pool(alias)
    assert _compat.pool_growing(pool) is False, changed("pool_growing", "an idle pool says it grows")
    with _compat.pool_lock(pool):
        pool._growing = True
        assert _compat.pool_growing(pool) is True
        _compat.stop_growing(pool)
    assert pool._growing is False


@canary("grow_pool")
def test_grow_pool(make_alias):
    alias = make_alias(pool={"min_size": 0, "max_size": 1, "timeout": 2})
    pool = open_pool(alias)
    assert wait_until(lambda: pool.get_stats()["pool_available"] == 1, 5)
    held = pool.getconn(2)
    pool.putconn(held)
    assert wait_until(lambda: pool.get_stats()["pool_available"] == 1, 5)
    # An empty pool, a queued client and room to grow: growing hands it a new connection.
    with _compat.pool_lock(pool):
        connection = _compat.pop_idle_connection(pool)
        pool._nconns -= 1
    _compat.close_pool_connection(pool, connection)
    client: WaitingClient[Any] = WaitingClient()
    with _compat.pool_lock(pool):
        pool._waiting.append(client)
        _compat.grow_pool(pool)
    assert wait_until(lambda: client.conn is not None, 5), changed(
        "grow_pool", "the pool did not grow for its waiting client"
    )
    client.conn.close()


@canary("pop_idle_connection")
def test_pop_idle_connection(make_alias):
    alias = make_alias(pool={"min_size": 2, "max_size": 2, "timeout": 2})
    pool = open_pool(alias)
    pool.wait(5)
    with _compat.pool_lock(pool):
        connection = _compat.pop_idle_connection(pool)
    assert isinstance(connection, psycopg.Connection), changed(
        "pop_idle_connection", f"popped {connection!r}"
    )
    stats = pool.get_stats()
    assert (stats["pool_size"], stats["pool_available"]) == (2, 1)
    _compat.close_pool_connection(pool, connection)
    assert connection.closed and _compat.connection_pool(connection) is None, changed(
        "pop_idle_connection", "_close_connection() left the connection open or tied to its pool"
    )
    pool.run_task(AddConnection(pool))  # its slot back, as the slot check does
    assert wait_until(lambda: pool.get_stats()["pool_available"] == 2, 5)


@canary("set_limits")
def test_set_limits(make_alias):
    alias = make_alias(pool={"min_size": 0, "max_size": 4, "timeout": 2})
    pool = get_pool(alias) or connections[alias].pool
    assert pool is not None and pool.closed
    _compat.set_limits(pool, 2, 3)  # before open: the initial tasks open min_size
    assert (pool.min_size, pool.max_size, pool.get_stats()["pool_size"]) == (2, 3, 2), changed(
        "set_limits", "the sizes of an unopened pool did not move"
    )
    pool.open(wait=True, timeout=5)
    assert wait_until(lambda: pool.get_stats()["pool_available"] == 2, 5), changed(
        "set_limits", "the pool did not open min_size connections"
    )
    held = [pool.getconn(2), pool.getconn(2)]
    _compat.set_limits(pool, 3, 3)  # one more to reach min_size, none more though 2 are out
    assert wait_until(lambda: pool.get_stats()["pool_available"] == 1, 5)
    assert pool.get_stats()["pool_size"] == 3, changed("set_limits", "it opened past min_size")
    for connection in held:
        pool.putconn(connection)


@canary("close_idle")
def test_close_idle(make_alias):
    alias = make_alias(pool={"min_size": 3, "max_size": 3, "timeout": 2})
    pool = open_pool(alias)
    pool.wait(5)
    held = pool.getconn(2)
    assert _compat.close_idle(pool, 5) == 2, changed("close_idle", "it did not close exactly the idle ones")
    stats = pool.get_stats()
    assert (stats["pool_size"], stats["pool_available"]) == (1, 0), changed("close_idle", f"left {stats}")
    pool.putconn(held)


@canary("counted_connections")
def test_counted_connections(make_alias):
    alias = make_alias(pool={"min_size": 2, "max_size": 3, "timeout": 2})
    pool = open_pool(alias)
    with _compat.pool_lock(pool):
        assert _compat.counted_connections(pool) == pool.get_stats()["pool_size"] >= 2, changed(
            "counted_connections", "_nconns is not the pool's size"
        )


@canary("close_over_limit")
def test_close_over_limit(make_alias):
    alias = make_alias(pool={"min_size": 2, "max_size": 2, "timeout": 2})
    pool = open_pool(alias)
    pool.wait(5)
    connection = pool.getconn(2)
    assert not _compat.close_over_limit(pool, connection, 2)
    assert _compat.close_over_limit(pool, connection, 1), changed("close_over_limit", "kept over the limit")
    assert connection.closed and pool.get_stats()["pool_size"] == 1


@canary("connection_pool")
def test_connection_pool(make_alias):
    alias = make_alias()
    pool = open_pool(alias)
    connection = pool.getconn(2)
    assert _compat.connection_pool(connection) is pool, changed("connection_pool", "a checkout has no ._pool")
    pool.putconn(connection)
    assert wait_until(lambda: _compat.connection_pool(connection) is None, 5), changed(
        "connection_pool", "a returned connection still names its pool"
    )
    params = connections[alias].get_connection_params()
    with psycopg.connect(**params) as unpooled:
        assert _compat.connection_pool(unpooled) is None


# --- Django ---------------------------------------------------------------------------------


@canary("called_by_django_connect")
def test_called_by_django_connect(make_alias):
    alias = make_alias()
    wrapper = connections[alias]
    ours = DatabaseWrapper.get_connection_params.__code__
    seen: list[tuple[bool, Any]] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "return" and frame.f_code is ours:
            seen.append((frame.f_back.f_code is _compat.DJANGO_CONNECT_CODE, arg))

    sys.setprofile(profile)
    try:
        wrapper.connect()
    finally:
        sys.setprofile(None)
    wrapper.close()
    assert seen and seen[-1][0], changed("called_by_django_connect", "connect() no longer calls it directly")
    assert seen[-1][1] == {}, changed("called_by_django_connect", "inside connect() it built parameters")
    assert "application_name" in wrapper.get_connection_params()  # anywhere else, the real ones


@canary("async_unsafe_parts")
def test_async_unsafe_parts():
    import asyncio

    from django.db.backends.postgresql.base import DatabaseWrapper as PostgresWrapper
    from django.utils.asyncio import async_unsafe

    from django_poolguard.backends.postgresql.async_check import ASYNC_UNSAFE_METHODS

    code = _compat.ASYNC_UNSAFE_CODE
    # The check poolguard makes the cheap way: no loop (get_running_loop() raising) passes; a loop
    # raises SynchronousOnlyOperation unless DJANGO_ALLOW_ASYNC_UNSAFE is set.
    assert {"get_running_loop", "RuntimeError", "environ", "SynchronousOnlyOperation"} <= set(
        code.co_names
    ), changed("async_unsafe_parts", f"its check reads {code.co_names}")
    assert "DJANGO_ALLOW_ASYNC_UNSAFE" in code.co_consts, changed(
        "async_unsafe_parts", "another escape hatch"
    )
    assert set(code.co_freevars) == {"func", "message"}, changed("async_unsafe_parts", "other closure cells")
    decorated = async_unsafe("a message")(len)
    assert _compat.async_unsafe_parts(decorated) == (len, "a message")
    assert _compat.async_unsafe_parts(len) is None
    guarded = [
        name for name in dir(PostgresWrapper) if _compat.async_unsafe_parts(getattr(PostgresWrapper, name))
    ]
    assert "cursor" in guarded and "connect" in guarded, changed(
        "async_unsafe_parts", "cursor()/connect() unguarded"
    )
    assert set(guarded) <= set(ASYNC_UNSAFE_METHODS), changed(
        "async_unsafe_parts", f"it now guards {guarded}"
    )

    async def inside() -> Any:
        return _compat.running_loop()

    assert _compat.running_loop() is None
    assert isinstance(asyncio.run(inside()), asyncio.AbstractEventLoop)


@canary("DJANGO_CONNECT_PATH")
def test_django_connect_path():
    from django.db.backends.postgresql.base import DatabaseWrapper as PostgresWrapper

    for name in _compat.DJANGO_CONNECT_PATH:
        assert any(name in cls.__dict__ for cls in (BaseDatabaseWrapper, PostgresWrapper)), changed(
            "DJANGO_CONNECT_PATH", f"Django's wrappers define no {name}()"
        )


@canary("DJANGO_CURSOR_CLASSES")
def test_django_cursor_classes():
    from django.db.backends.postgresql.base import DatabaseWrapper as PostgresWrapper

    wrapper = connections["default"]
    wrapper.ensure_connection()
    plain, debug = _compat.DJANGO_CURSOR_CLASSES
    # Django's own methods, not poolguard's overrides: the profile writes their bodies out.
    for make, expected in (
        (PostgresWrapper.make_cursor, plain),
        (PostgresWrapper.make_debug_cursor, debug),
    ):
        cursor = make(wrapper, wrapper.connection.cursor())
        assert type(cursor) is expected, changed(
            "DJANGO_CURSOR_CLASSES", f"{make.__name__} built {type(cursor)}"
        )
        cursor.close()

    order: list[str] = []

    class Counting(plain):  # type: ignore[misc,valid-type]
        def _execute(self, *args: Any) -> Any:
            order.append("_execute")
            return super()._execute(*args)

        def _executemany(self, *args: Any) -> Any:
            order.append("_executemany")
            return super()._executemany(*args)

    def around(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        order.append("wrapper")
        result = execute(sql, params, many, context)
        order.append("/wrapper")
        return result

    with wrapper.execute_wrapper(around), Counting(wrapper.connection.cursor(), wrapper) as cursor:
        cursor.execute("SELECT %s", [1])
        cursor.executemany("SELECT %s", [[1], [2]])
    assert order == ["wrapper", "_execute", "/wrapper", "wrapper", "_executemany", "/wrapper"], changed(
        "DJANGO_CURSOR_CLASSES", f"a statement ran {order}, not its innermost call once inside the wrappers"
    )


@canary("current_frames")
def test_current_frames():
    entered, release = threading.Event(), threading.Event()

    def waits_here() -> None:
        entered.set()
        release.wait(10)

    thread = threading.Thread(target=waits_here)
    thread.start()
    try:
        assert entered.wait(10)
        frames = _compat.current_frames()
        own = frames[threading.get_ident()]
        assert own.f_back is not None and own.f_back.f_code is test_current_frames.__code__, changed(
            "current_frames", "this thread's innermost frame is not the running function's"
        )
        frame, names = frames.get(thread.ident), []  # type: ignore[arg-type]
        while frame is not None:
            names.append(frame.f_code.co_name)
            frame = frame.f_back
        assert "waits_here" in names, changed("current_frames", f"the waiting thread's stack is {names}")
    finally:
        release.set()
        thread.join()


@canary("configure_timezone")
def test_configure_timezone():
    wrapper = connections["default"]
    with psycopg.connect(**wrapper.get_connection_params(), autocommit=True) as connection:
        connection.execute("SET TimeZone = 'Asia/Tokyo'")
        _compat.configure_timezone(wrapper, connection)
        shown = connection.execute("SHOW TimeZone").fetchone()
    assert shown is not None and shown[0] == wrapper.timezone_name, changed(
        "configure_timezone", f"the session's time zone is {shown}"
    )


@canary("mark_response_logged")
def test_mark_response_logged(caplog):
    request = RequestFactory().get("/")
    caplog.set_level(logging.ERROR, logger="django.request")
    log_response("unmarked", response=HttpResponse(status=503), request=request)
    marked = HttpResponse(status=503)
    _compat.mark_response_logged(marked)
    log_response("marked", response=marked, request=request)
    messages = [record.getMessage() for record in caplog.records]
    assert "unmarked" in messages
    assert "marked" not in messages, changed("mark_response_logged", "Django logged a marked response again")


@canary("on_commit_pending")
def test_on_commit_pending():
    wrapper = connections["default"]
    assert not _compat.on_commit_pending(wrapper)
    ran = []
    with transaction.atomic():
        transaction.on_commit(lambda: ran.append(1))
        assert _compat.on_commit_pending(wrapper), changed(
            "on_commit_pending", "an on_commit() callback inside atomic() is not in run_on_commit"
        )
    assert ran == [1]
    assert not _compat.on_commit_pending(wrapper), changed(
        "on_commit_pending", "run_on_commit still holds callbacks after the commit ran them"
    )


@canary("WRAPPER_CONNECTION_STATE")
def test_wrapper_state_is_what_django_initialises():
    blank = _compat._BlankWrapper(connections["default"].settings_dict, "default")
    initialised = set(vars(blank))
    declared = set(WRAPPER_CONNECTION_STATE) | set(WRAPPER_CONFIGURATION)
    assert initialised == declared, changed(
        "WRAPPER_CONNECTION_STATE",
        f"__init__ now also sets {sorted(initialised - declared)} and no longer {sorted(declared - initialised)}; "
        "sort each new one into WRAPPER_CONNECTION_STATE (reset by forget_connection) or WRAPPER_CONFIGURATION",
    )


def test_django_connect_writes_only_connection_state(make_alias):
    """Everything Django's connect() sets up is what forget_connection() resets."""
    alias = make_alias()
    wrapper = connections[alias]
    written: set[str] = set()

    class Recording(type(wrapper)):  # type: ignore[misc]
        def __setattr__(self, name: str, value: Any) -> None:
            written.add(name)
            super().__setattr__(name, value)

    wrapper.__class__ = Recording
    try:
        wrapper.connect()
    finally:
        wrapper.__class__ = DatabaseWrapper
        wrapper.close()
    written.discard("__class__")  # the recording's own undoing
    ours = {name for name in written if name.startswith("_guard_")}
    unexpected = written - ours - set(WRAPPER_CONNECTION_STATE) - set(CONNECT_CONFIGURATION)
    assert not unexpected, changed(
        "WRAPPER_CONNECTION_STATE",
        f"connect() now also sets {sorted(unexpected)}: add each to WRAPPER_CONNECTION_STATE (reset by "
        "forget_connection) or, if connect() rebuilds it from the settings, to CONNECT_CONFIGURATION",
    )
    assert set(CONNECT_CONFIGURATION) <= written, "connect() no longer sets " + str(CONNECT_CONFIGURATION)


def test_forget_connection_leaves_the_wrapper_as_django_initialises_it(make_alias):
    alias = make_alias()
    wrapper = connections[alias]
    pool = open_pool(alias)
    # A holder that died inside nested atomic blocks: nobody will ever leave them.
    transaction.atomic(using=alias).__enter__()
    transaction.atomic(using=alias, savepoint=True).__enter__()
    transaction.on_commit(lambda: None, using=alias)
    wrapper.run_commit_hooks_on_set_autocommit_on = True
    wrapper.rollback_exc = RuntimeError("earlier")
    wrapper.errors_occurred = True
    connection = wrapper.connection
    wrapper.forget_connection()
    fresh = connections.create_connection(alias)
    differing = {
        name: getattr(wrapper, name)
        for name in WRAPPER_CONNECTION_STATE
        if getattr(wrapper, name) != getattr(fresh, name)
    }
    assert not differing, f"forget_connection() left {differing}"
    connection.rollback()
    pool.putconn(connection)
    # The wrapper works again, from scratch.
    with transaction.atomic(using=alias), wrapper.cursor() as cursor:
        cursor.execute("SELECT 1")
    wrapper.close()
    assert len(pool.ledger) == 0


# --- Method overrides and Python ------------------------------------------------------------


def test_guarded_pool_attributes_shadow_nothing_of_psycopg_pool():
    """GuardedPool's own attributes must never take the name of one psycopg_pool uses."""
    own = {"config", "ledger", "pid", "created", "connect_failing", "last_connect_error", "factory"}
    own |= {"_transit", "_opened_connections", "slots_broken_at", "configured_min", "configured_max"}
    plain = ConnectionPool(kwargs={}, min_size=0, max_size=1, open=False)
    guarded = GuardedPool(kwargs={}, min_size=0, max_size=1, open=False, config=None)  # type: ignore[arg-type]
    assert set(vars(guarded)) - set(vars(plain)) == own, "GuardedPool.__init__ changed: update this list"
    gate = {"admission", "_gate_queue", "_gate_idle", "_gate_open_above", "_gate_floor", "_gate_served"}
    gate |= {"_gate_admit", "_gate_hand_over"}  # PrioritizedPool's
    assert gate >= {name for name in vars(PrioritizedPool) if not name.startswith("__")} - {
        "_get_ready_connection",
        "_add_to_pool",
    }, "PrioritizedPool has new attributes: add them here"
    taken = (own | gate | {"lease_limit", "lease_wanted", "lease_freed", "lease_view"}) & (
        set(vars(plain)) | set(dir(ConnectionPool))
    )
    assert not taken, f"psycopg_pool {psycopg_pool.__version__} now uses {sorted(taken)} itself: rename ours"


@canary("OVERRIDDEN_HOOKS")
@pytest.mark.parametrize("hook", OVERRIDDEN_HOOKS, ids=lambda hook: hook.name)
def test_overridden_hooks(hook):
    owner = hook.owner()
    method = getattr(owner, hook.name, None)
    assert callable(method), changed("OVERRIDDEN_HOOKS", f"{owner.__qualname__}.{hook.name} is gone")
    parameters = tuple(inspect.signature(method).parameters)
    assert parameters == hook.parameters, changed(
        "OVERRIDDEN_HOOKS", f"{owner.__qualname__}.{hook.name}{parameters}, expected {hook.parameters}"
    )


@canary("count_value")
def test_count_value():
    counter = itertools.count()
    assert _compat.count_value(counter) == 0, changed("count_value", repr(counter))
    for _ in range(1234):
        next(counter)
    assert _compat.count_value(counter) == 1234, changed("count_value", repr(counter))
    assert next(counter) == 1234, "reading the counter advanced it"
