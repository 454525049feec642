"""The one place poolguard touches Django's and psycopg_pool's internals.

Everything here is private to the library it reaches into and may change in any release. Each
use names the versions it was checked on; ``tests/test_compat.py`` holds a canary test per use
that fails loudly, naming the internal, when an upgrade changes it. Where a public API gives the
same figure without a lock (``ConnectionPool.get_stats()``, ``ConnectionPool.closed``), the
callers use that instead.

Method overrides of private hooks (``_connect``, ``_close``, ...) cannot live here: they are
declared in :data:`OVERRIDDEN_HOOKS`, and the canary checks they still exist with the signature
poolguard overrides.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count
from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.postgresql.base import CursorDebugWrapper as PostgresCursorDebugWrapper
from django.db.backends.utils import CursorWrapper
from django.utils.asyncio import async_unsafe
from psycopg_pool import ConnectionPool
from psycopg_pool.pool import AddConnection, MaintenanceTask, ReturnConnection, WaitingClient

PSYCOPG_POOL_CHECKED = "psycopg_pool 3.2.8, 3.3.3"
DJANGO_CHECKED = "Django 5.2.19, 6.0.10, 6.1.3"
PYTHON_CHECKED = "CPython 3.11"


@dataclass(frozen=True)
class Internal:
    """One internal poolguard relies on: what it is, why, and where it was checked."""

    name: str  # as written in its library, e.g. "psycopg_pool ConnectionPool._waiting"
    why: str
    checked_on: str


#: Every internal poolguard uses, by the name of the function or constant here that uses it.
INTERNALS: dict[str, Internal] = {}


def _fence(name: str, internal: str, why: str, checked_on: str) -> None:
    INTERNALS[name] = Internal(internal, why, checked_on)


# --- psycopg_pool ---------------------------------------------------------------------------
# Read without the pool's lock unless said otherwise: the watchdog must still see a pool whose lock
# a dying thread kept, and the checkout path takes no lock of ours.

_fence(
    "AddConnection",
    "psycopg_pool.pool.AddConnection, ReturnConnection, MaintenanceTask (run(), _run(pool), .pool)",
    "tracks connections being opened or reset by the pool's workers (the slot check)",
    PSYCOPG_POOL_CHECKED,
)

_fence(
    "waiting_clients",
    "psycopg_pool ConnectionPool._waiting (WaitingClient.conn, .error)",
    "clients still waiting: get_stats()'s requests_waiting also counts timed-out clients left queued",
    PSYCOPG_POOL_CHECKED,
)


def waiting_clients(pool: ConnectionPool[Any]) -> list[WaitingClient[Any]]:
    """The queued clients not yet served nor failed (psycopg_pool leaves timed-out ones queued)."""
    return [client for client in list(pool._waiting) if client_pending(client)]


_fence(
    "client_pending",
    "psycopg_pool WaitingClient.conn, .error and set(conn)",
    "the priority gate hands a returned connection to the waiter it picks, skipping served and failed ones",
    PSYCOPG_POOL_CHECKED,
)


def client_pending(client: WaitingClient[Any]) -> bool:
    """Neither served nor failed (timed out, or refused)."""
    return client.conn is None and client.error is None


def hand_connection(client: WaitingClient[Any], connection: Any) -> bool:
    """Give ``connection`` to a waiting client; False if it no longer waits (keep the connection)."""
    return client.set(connection)


_fence(
    "waiting_queue",
    "psycopg_pool ConnectionPool._waiting, a deque: append() in _getconn_unchecked, popleft() and "
    "truth in _add_to_pool, len() in _get_ready_connection and get_stats(), clear() in close()",
    "the priority gate replaces the queue with one that notes each waiting client's class on arrival",
    PSYCOPG_POOL_CHECKED,
)


def install_waiting_queue(pool: ConnectionPool[Any], queue: Any) -> None:
    """Replace the (still empty) queue of waiting clients; call before the pool opens."""
    pool._waiting = queue


def waiting_queue(pool: ConnectionPool[Any]) -> Any:
    return pool._waiting


_fence(
    "free_connections",
    "psycopg_pool ConnectionPool._pool, _max_size, _nconns",
    "the priority gate counts what is free: idle connections plus those the pool may still open",
    PSYCOPG_POOL_CHECKED,
)


def free_connections(pool: ConnectionPool[Any]) -> int:
    """Idle connections plus those the pool may still open; call under :func:`pool_lock`."""
    return len(pool._pool) + pool._max_size - pool._nconns


_fence(
    "idle_queue",
    "psycopg_pool ConnectionPool._pool, the deque of idle connections, made once in __init__ and "
    "never rebound (emptied with clear() on close)",
    "the priority gate keeps a reference to it and counts the idle connections with len() on every "
    "checkout, without a call into this module",
    PSYCOPG_POOL_CHECKED,
)


def idle_queue(pool: ConnectionPool[Any]) -> Any:
    """The pool's own deque of idle connections: read it with ``len()`` only, under :func:`pool_lock`."""
    return pool._pool


_fence(
    "count_request_error",
    "psycopg_pool ConnectionPool._stats and _REQUESTS_ERRORS",
    "a checkout the priority gate refuses counts in get_stats()'s requests_errors as psycopg_pool's own do",
    PSYCOPG_POOL_CHECKED,
)


def count_request_error(pool: ConnectionPool[Any]) -> None:
    """Count a refused checkout; call under :func:`pool_lock`."""
    pool._stats[pool._REQUESTS_ERRORS] += 1


_fence(
    "add_to_pool_handing",
    "psycopg_pool ConnectionPool._add_to_pool's own steps: Connection._pool = None on return, "
    "_closed checked before and under _lock (then _close_connection), _waiting served first, else "
    "_pool.append(conn) and _pool_full_event set once min_size connections are idle",
    "the priority gate's _add_to_pool chooses the waiter; a connection nobody may take stays idle as "
    "psycopg_pool keeps it",
    PSYCOPG_POOL_CHECKED,
)


def add_to_pool_handing(hand_to_waiter: Callable[[Any, Any], bool]) -> Callable[[Any, Any], None]:
    """psycopg_pool's ``_add_to_pool`` step for step, except who gets the connection: with clients
    waiting, ``hand_to_waiter(pool, connection)`` (under the pool's lock) serves one and says so;
    else, or when it served none, the connection stays idle. Made once, as the pool's method: the
    uncontended return runs no more than psycopg_pool's own."""

    def _add_to_pool(pool: Any, connection: Any) -> None:
        connection._pool = None  # no reference loop while the connection is idle
        if pool._closed:
            pool._close_connection(connection)
            return
        with pool._lock:
            if pool._closed:  # closed while we waited for the lock
                pool._close_connection(connection)
                return
            if pool._waiting and hand_to_waiter(pool, connection):
                return
            pool._pool.append(connection)
            if pool._pool_full_event and len(pool._pool) >= pool._min_size:
                pool._pool_full_event.set()

    return _add_to_pool


_fence(
    "has_sleeper",
    "psycopg_pool WaitingClient._cond (a threading.Condition) and Condition._waiters",
    "tells a queued client a thread still waits on from one an exception abandoned",
    f"{PSYCOPG_POOL_CHECKED}; {PYTHON_CHECKED}",
)


def has_sleeper(client: WaitingClient[Any]) -> bool:
    """A thread sleeps in this client's condition, waiting to be served."""
    return bool(client._cond._waiters)  # type: ignore[attr-defined]


_fence(
    "fail_client",
    "psycopg_pool WaitingClient.fail(error)",
    "takes an abandoned client off the queue: psycopg_pool skips failed clients",
    PSYCOPG_POOL_CHECKED,
)


def fail_client(client: WaitingClient[Any], error: BaseException) -> None:
    client.fail(error)  # type: ignore[arg-type]


_fence(
    "idle_connections",
    "psycopg_pool ConnectionPool._pool (the deque of idle connections)",
    "after fork, the child silences the idle connections it inherited",
    PSYCOPG_POOL_CHECKED,
)


def idle_connections(pool: ConnectionPool[Any]) -> list[Any]:
    return list(pool._pool)


_fence(
    "pool_lock",
    "psycopg_pool ConnectionPool._lock",
    "the slot check counts and repairs under the pool's own lock, and notices when it stays taken",
    PSYCOPG_POOL_CHECKED,
)


def pool_lock(pool: ConnectionPool[Any]) -> Any:
    return pool._lock


_fence(
    "task_queue_lock",
    "psycopg_pool ConnectionPool._tasks.mutex (queue.Queue's lock)",
    "a thread that died holding it blocks every connection the pool would open",
    f"{PSYCOPG_POOL_CHECKED}; {PYTHON_CHECKED}",
)


def task_queue_lock(pool: ConnectionPool[Any]) -> Any:
    return pool._tasks.mutex


_fence(
    "pool_growing",
    "psycopg_pool ConnectionPool._growing",
    "a pool that believes it is growing with no task doing it never grows again (the slot check)",
    PSYCOPG_POOL_CHECKED,
)


def pool_growing(pool: ConnectionPool[Any]) -> bool:
    return bool(pool._growing)


def stop_growing(pool: ConnectionPool[Any]) -> None:
    """Clear the growing flag whose task was lost; call under :func:`pool_lock`."""
    pool._growing = False


_fence(
    "grow_pool",
    "psycopg_pool ConnectionPool._maybe_grow_pool()",
    "lets a pool whose growing task was lost grow again for its waiting clients",
    PSYCOPG_POOL_CHECKED,
)


def grow_pool(pool: ConnectionPool[Any]) -> None:
    """Grow the pool if clients wait and it has room; call under :func:`pool_lock`."""
    if pool._waiting:
        pool._maybe_grow_pool()


_fence(
    "pop_idle_connection",
    "psycopg_pool ConnectionPool._pool (pop) and _close_connection(conn)",
    "closes idle connections beyond what the pool counts (a lost one came back)",
    PSYCOPG_POOL_CHECKED,
)


def pop_idle_connection(pool: ConnectionPool[Any]) -> Any | None:
    """Take one idle connection out of the pool, or None; call under :func:`pool_lock`."""
    return pool._pool.pop() if pool._pool else None


def close_pool_connection(pool: ConnectionPool[Any], connection: Any) -> None:
    """Close a connection taken out of the pool, as the pool closes its own."""
    pool._close_connection(connection)


_fence(
    "set_limits",
    "psycopg_pool ConnectionPool._min_size, _max_size, _nconns, _opened, _closed and AddConnection(pool)",
    "a fleet budget's lease moves the pool's limits; psycopg_pool's resize() opens min_size - old min_size "
    "connections whatever is already open, which could pass the lease",
    PSYCOPG_POOL_CHECKED,
)


def set_limits(pool: ConnectionPool[Any], min_size: int, max_size: int) -> None:
    """Set the pool's min and max sizes; open connections up to ``min_size`` if it has fewer.

    Before the pool opens, its initial tasks open ``min_size`` (``_nconns`` is their count).
    Takes the pool's lock.
    """
    grow = 0
    with pool._lock:
        pool._min_size = min_size
        pool._max_size = max_size
        if not pool._opened:
            pool._nconns = min_size
        elif not pool._closed:
            grow = max(0, min_size - pool._nconns)
            pool._nconns += grow
    for _ in range(grow):
        pool.run_task(AddConnection(pool))


_fence(
    "close_idle",
    "psycopg_pool ConnectionPool._pool (pop), _nconns, _nconns_min and _close_connection(conn), "
    "as ConnectionPool._shrink_pool does for one connection",
    "a process above its fleet-budget lease closes idle connections at once, never a busy one",
    PSYCOPG_POOL_CHECKED,
)


def close_idle(pool: ConnectionPool[Any], count: int) -> int:
    """Close up to ``count`` idle connections and stop counting their slots; returns how many."""
    closing = []
    with pool._lock:
        while count > 0 and pool._pool:
            closing.append(pool._pool.popleft())
            pool._nconns -= 1
            pool._nconns_min = min(pool._nconns_min, len(pool._pool))
            count -= 1
    for connection in closing:
        pool._close_connection(connection)
    return len(closing)


_fence(
    "counted_connections",
    "psycopg_pool ConnectionPool._nconns",
    "the fleet budget's cap compares the connections the pool counts (open, opening, out) with the lease "
    "under the pool's lock, where get_stats() would build two dicts",
    PSYCOPG_POOL_CHECKED,
)


def counted_connections(pool: ConnectionPool[Any]) -> int:
    """Connections the pool counts: open, being opened, or out; call under :func:`pool_lock`."""
    return int(pool._nconns)


_fence(
    "close_over_limit",
    "psycopg_pool ConnectionPool._lock, _nconns, _closed and _close_connection(conn), on _add_to_pool's path",
    "a connection coming back to a pool that counts more than its fleet-budget lease is closed, not kept",
    PSYCOPG_POOL_CHECKED,
)


def close_over_limit(pool: ConnectionPool[Any], connection: Any, limit: int) -> bool:
    """Close ``connection`` and stop counting its slot if the pool counts more than ``limit``."""
    if pool._nconns <= limit:  # the common case, read without the lock (checked again under it)
        return False
    with pool._lock:
        if pool._closed or pool._nconns <= limit:
            return False
        pool._nconns -= 1
    pool._close_connection(connection)
    return True


_fence(
    "connection_pool",
    "psycopg Connection._pool (set by psycopg_pool on a connection it hands out)",
    "tells a connection of one of poolguard's pools apart from any other",
    PSYCOPG_POOL_CHECKED,
)


def connection_pool(connection: Any) -> Any:
    """The pool that handed ``connection`` out and has not had it back, else None."""
    return getattr(connection, "_pool", None)


# --- Django ---------------------------------------------------------------------------------

_fence(
    "called_by_django_connect",
    "sys._getframe(2) and the code object of BaseDatabaseWrapper.connect (under @async_unsafe)",
    "Django's connect() builds connection parameters on every pooled checkout and ignores them",
    f"{DJANGO_CHECKED}; {PYTHON_CHECKED}",
)
DJANGO_CONNECT_CODE = getattr(
    BaseDatabaseWrapper.connect, "__wrapped__", BaseDatabaseWrapper.connect
).__code__
_getframe = sys._getframe


def called_by_django_connect() -> bool:
    """The function calling the caller is Django's own ``connect()``."""
    return _getframe(2).f_code is DJANGO_CONNECT_CODE


_fence(
    "DJANGO_CONNECT_PATH",
    "BaseDatabaseWrapper._cursor, connect, ensure_connection, cursor, get_new_connection",
    "the frames of Django's connection opening are left out of recorded acquire stacks",
    DJANGO_CHECKED,
)
#: Methods of Django's wrappers on the way from a query to a checkout: the same under every checkout.
DJANGO_CONNECT_PATH = ("connect", "ensure_connection", "_cursor", "cursor", "get_new_connection")

_fence(
    "async_unsafe_parts",
    "django.utils.asyncio.async_unsafe's inner(): __wrapped__, its 'message' cell and its check (a"
    " RuntimeError from get_running_loop() means no loop; else SynchronousOnlyOperation unless"
    " DJANGO_ALLOW_ASYNC_UNSAFE); asyncio._get_running_loop()",
    "the backend makes Django's async-safety check on connect(), cursor(), close()... without raising"
    " and catching an exception for it",
    f"{DJANGO_CHECKED}; {PYTHON_CHECKED}",
)
#: The code of every function ``@async_unsafe`` returns (one nested function: one code object).
ASYNC_UNSAFE_CODE = async_unsafe(lambda: None).__code__
#: This thread's running event loop, or None: the C function ``get_running_loop()`` raises over.
running_loop: Callable[[], Any] = asyncio._get_running_loop


def async_unsafe_parts(method: Any) -> tuple[Callable[..., Any], str] | None:
    """The function Django decorated with ``@async_unsafe`` and the decorator's message; None
    when ``method`` is not decorated so (then the backend keeps Django's method as it is)."""
    code = getattr(method, "__code__", None)
    if code is not ASYNC_UNSAFE_CODE:
        return None
    cells = dict(zip(code.co_freevars, method.__closure__ or (), strict=False))
    try:
        return method.__wrapped__, cells["message"].cell_contents
    except (AttributeError, KeyError, ValueError):  # an empty cell raises ValueError
        return None


_fence(
    "configure_timezone",
    "postgresql DatabaseWrapper._configure_timezone(connection)",
    "a side connection gets the alias's time zone exactly as Django sets it",
    DJANGO_CHECKED,
)


def configure_timezone(wrapper: Any, connection: Any) -> None:
    wrapper._configure_timezone(connection)


_fence(
    "mark_response_logged",
    "HttpResponse._has_been_logged (read by django.utils.log.log_response)",
    "a shed 503 is logged once per alias and interval by poolguard, not once per request by Django",
    DJANGO_CHECKED,
)


def mark_response_logged(response: Any) -> None:
    response._has_been_logged = True


_fence(
    "WRAPPER_CONNECTION_STATE",
    "the connection and transaction attributes BaseDatabaseWrapper.__init__ sets",
    "forget_connection() leaves a wrapper as Django's __init__ does, for connect() to reuse",
    DJANGO_CHECKED,
)
#: What a wrapper knows about its current connection and transaction; ``__init__`` sets each.
WRAPPER_CONNECTION_STATE = (
    "connection",
    "autocommit",
    "in_atomic_block",
    "savepoint_state",
    "savepoint_ids",
    "atomic_blocks",
    "commit_on_exit",
    "needs_rollback",
    "rollback_exc",
    "close_at",
    "closed_in_transaction",
    "errors_occurred",
    "health_check_enabled",
    "health_check_done",
    "run_on_commit",
    "run_commit_hooks_on_set_autocommit_on",
)
#: What else ``__init__`` sets: the wrapper's configuration and helpers, kept across connections.
WRAPPER_CONFIGURATION = (
    "settings_dict",
    "alias",
    "queries_log",
    "force_debug_cursor",
    "_thread_sharing_lock",
    "_thread_sharing_count",
    "_thread_ident",
    "execute_wrappers",
    "client",
    "creation",
    "features",
    "introspection",
    "ops",
    "validation",
)

#: What the PostgreSQL backend's connect() sets from the settings besides: rebuilt on every connect.
CONNECT_CONFIGURATION = ("isolation_level",)


def _no_helper(wrapper: Any, owner: Any) -> None:
    return None


class _BlankWrapper(BaseDatabaseWrapper):
    """Only Django's own ``__init__``: no backend helpers built, nothing opened."""

    client_class = creation_class = features_class = _no_helper  # type: ignore[assignment]
    introspection_class = ops_class = validation_class = _no_helper  # type: ignore[assignment]


def initial_state(settings_dict: dict[str, Any], alias: str) -> dict[str, Any]:
    """The connection and transaction state Django's ``__init__`` gives a new wrapper (new lists)."""
    blank = _BlankWrapper(settings_dict, alias)
    return {name: getattr(blank, name) for name in WRAPPER_CONNECTION_STATE}


_fence(
    "DJANGO_CURSOR_CLASSES",
    "postgresql DatabaseWrapper.make_cursor / make_debug_cursor build CursorWrapper / postgresql's own "
    "CursorDebugWrapper (which adds copy()) (cursor, wrapper); CursorWrapper.execute/executemany run "
    "_execute/_executemany once per statement",
    "the profile's cursors are those classes with the innermost call timed, built without super()",
    DJANGO_CHECKED,
)

#: What Django's PostgreSQL ``make_cursor`` and ``make_debug_cursor`` build, in that order (the debug
#: one is the backend's own, which records ``copy()``); the profile's wrapper builds them itself
#: (one call less per cursor) when it has nothing to time.
DJANGO_CURSOR_CLASSES = (CursorWrapper, PostgresCursorDebugWrapper)


_fence(
    "on_commit_pending",
    "BaseDatabaseWrapper.run_on_commit (the on_commit() callbacks not yet run)",
    "transaction release mode keeps a connection while on-commit callbacks wait for their commit",
    DJANGO_CHECKED,
)


def on_commit_pending(wrapper: Any) -> bool:
    """``transaction.on_commit()`` callbacks are waiting on this wrapper's connection."""
    return bool(wrapper.run_on_commit)


# --- Method overrides --------------------------------------------------------------------------


@dataclass(frozen=True)
class Hook:
    """A private method poolguard overrides (or calls through ``super()``) in a subclass."""

    owner: Callable[[], type]  # the class defining it, imported when checked
    name: str
    parameters: tuple[str, ...]
    checked_on: str


def _postgres_wrapper() -> type:
    from django.db.backends.postgresql.base import DatabaseWrapper

    return DatabaseWrapper


def _postgres_creation() -> type:
    from django.db.backends.postgresql.creation import DatabaseCreation

    return DatabaseCreation


#: Overridden in engine/pool.py (GuardedPool, PrioritizedPool, _TransitTask) and backends/postgresql/
#: (the wrappers, their creation class, the profile's timed cursors).
OVERRIDDEN_HOOKS = (
    Hook(lambda: ConnectionPool, "_connect", ("self", "timeout"), PSYCOPG_POOL_CHECKED),
    Hook(lambda: ConnectionPool, "run_task", ("self", "task"), PSYCOPG_POOL_CHECKED),
    Hook(lambda: ConnectionPool, "schedule_task", ("self", "task", "delay"), PSYCOPG_POOL_CHECKED),
    Hook(lambda: ConnectionPool, "_get_ready_connection", ("self", "timeout"), PSYCOPG_POOL_CHECKED),
    Hook(lambda: ConnectionPool, "_add_to_pool", ("self", "conn"), PSYCOPG_POOL_CHECKED),
    # Called under the pool's lock only when a client must wait: the fleet budget's lease cap.
    Hook(lambda: ConnectionPool, "_maybe_grow_pool", ("self",), PSYCOPG_POOL_CHECKED),
    Hook(lambda: MaintenanceTask, "run", ("self",), PSYCOPG_POOL_CHECKED),
    Hook(lambda: MaintenanceTask, "_run", ("self", "pool"), PSYCOPG_POOL_CHECKED),
    Hook(_postgres_wrapper, "_configure_connection", ("self", "connection"), DJANGO_CHECKED),
    Hook(_postgres_wrapper, "_close", ("self",), DJANGO_CHECKED),
    Hook(_postgres_wrapper, "_set_autocommit", ("self", "autocommit"), DJANGO_CHECKED),
    Hook(_postgres_wrapper, "_cursor", ("self", "name"), DJANGO_CHECKED),
    # The pool-time profile: statements timed in the innermost call, commits timed, timed cursors made.
    Hook(_postgres_wrapper, "_commit", ("self",), DJANGO_CHECKED),
    Hook(_postgres_wrapper, "make_cursor", ("self", "cursor"), DJANGO_CHECKED),
    Hook(_postgres_wrapper, "make_debug_cursor", ("self", "cursor"), DJANGO_CHECKED),
    Hook(
        lambda: CursorWrapper, "_execute", ("self", "sql", "params", "ignored_wrapper_args"), DJANGO_CHECKED
    ),
    Hook(
        lambda: CursorWrapper,
        "_executemany",
        ("self", "sql", "param_list", "ignored_wrapper_args"),
        DJANGO_CHECKED,
    ),
    Hook(_postgres_creation, "_destroy_test_db", ("self", "test_database_name", "verbosity"), DJANGO_CHECKED),
)
_fence(
    "OVERRIDDEN_HOOKS",
    "ConnectionPool._connect, run_task, schedule_task, _get_ready_connection, _add_to_pool, "
    "_maybe_grow_pool; "
    "MaintenanceTask.run, _run; postgresql "
    "DatabaseWrapper._configure_connection, _close, _set_autocommit, _cursor, _commit, make_cursor, "
    "make_debug_cursor; CursorWrapper._execute, _executemany; DatabaseCreation._destroy_test_db",
    "poolguard overrides them in its pool, its wrappers, its timed cursors and its test-database creation",
    f"{PSYCOPG_POOL_CHECKED}; {DJANGO_CHECKED}",
)


# --- Python ---------------------------------------------------------------------------------

_fence(
    "count_value",
    "repr(itertools.count) == 'count(N)'",
    "reads a lock-free counter many threads bump; itertools.count has no public read",
    PYTHON_CHECKED,
)


def count_value(counter: count[int]) -> int:
    """The next value ``counter`` will give, read without advancing it."""
    return int(repr(counter)[6:-1])


_fence(
    "current_frames",
    "sys._current_frames() (thread ident -> its innermost frame)",
    "the profile's watchdog task looks where each holder waits between queries, off the checkout path",
    PYTHON_CHECKED,
)


def current_frames() -> dict[int, Any]:
    """Every thread's innermost frame, by thread ident."""
    return sys._current_frames()


__all__ = [
    "ASYNC_UNSAFE_CODE",
    "CONNECT_CONFIGURATION",
    "DJANGO_CONNECT_PATH",
    "DJANGO_CURSOR_CLASSES",
    "INTERNALS",
    "OVERRIDDEN_HOOKS",
    "WRAPPER_CONFIGURATION",
    "WRAPPER_CONNECTION_STATE",
    "AddConnection",
    "MaintenanceTask",
    "ReturnConnection",
    "WaitingClient",
    "async_unsafe_parts",
    "called_by_django_connect",
    "client_pending",
    "close_pool_connection",
    "configure_timezone",
    "connection_pool",
    "count_request_error",
    "count_value",
    "current_frames",
    "fail_client",
    "free_connections",
    "grow_pool",
    "hand_connection",
    "has_sleeper",
    "idle_connections",
    "idle_queue",
    "initial_state",
    "install_waiting_queue",
    "mark_response_logged",
    "on_commit_pending",
    "pool_growing",
    "pool_lock",
    "pop_idle_connection",
    "running_loop",
    "stop_growing",
    "task_queue_lock",
    "waiting_clients",
    "waiting_queue",
]
