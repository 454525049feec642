"""The guarded pool: psycopg_pool's ``ConnectionPool`` with a checkout ledger, and this
process's registry of pools (one per alias), which never crosses ``fork()``.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections import defaultdict
from collections.abc import Callable
from time import monotonic
from typing import Any

from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout, TooManyRequests

from django_poolguard.conf import AliasConfig, guard_settings
from django_poolguard.engine import stacks
from django_poolguard.engine.context import current_context
from django_poolguard.engine.ledger import Ledger
from django_poolguard.escaping import escape_controls
from django_poolguard.exceptions import PoolExhausted, PoolQueueFull

logger = logging.getLogger("django_poolguard")


class GuardedPool(ConnectionPool):  # type: ignore[type-arg]
    """A ``ConnectionPool`` that records every checkout in a :class:`Ledger`."""

    def __init__(self, *args: Any, config: AliasConfig, **kwargs: Any) -> None:
        self.config = config
        self.ledger = Ledger()
        self.pid = os.getpid()
        self.created = monotonic()
        self.connect_failing = False  # the last connection attempt failed: the database is unreachable
        super().__init__(*args, **kwargs)

    def open(self, wait: bool = False, timeout: float = 30.0) -> None:
        # Django calls open() before every checkout; once open, skip psycopg_pool's lock.
        if self._opened and not self._closed and not wait:
            return
        super().open(wait=wait, timeout=timeout)

    # The hot path: one monotonic pair, a frame walk and a dict write per checkout.
    def getconn(self, timeout: float | None = None) -> Any:
        started = monotonic()
        try:
            connection = super().getconn(timeout)
        except TooManyRequests as exc:
            raise self._exhausted(started, queue_full=True) from exc
        except PoolTimeout as exc:
            raise self._exhausted(started, queue_full=False) from exc
        waited = monotonic() - started
        stack = (
            stacks.capture(1, guard_settings.STACK_DEPTH, _PLUMBING or _plumbing_codes())
            if guard_settings.CAPTURE_STACKS
            else ()
        )
        self.ledger.add(connection, waited, stack, current_context())
        return connection

    def putconn(self, conn: Any) -> None:
        self.ledger.remove(conn)
        super().putconn(conn)

    def state(self) -> dict[str, int]:
        """Sizes read without the pool's lock: a consistent-enough view for monitoring."""
        size = self._nconns
        idle = len(self._pool)
        return {
            "min": self.min_size,
            "max": self.max_size,
            "size": size,
            "in_use": len(self.ledger),
            "idle": idle,
            "waiting": self.waiting(),
        }

    def waiting(self) -> int:
        """Clients still waiting: psycopg_pool leaves timed-out ones queued until the next return."""
        return sum(1 for client in list(self._waiting) if client.conn is None and client.error is None)

    def connection_errors(self) -> int:
        """Failed connection attempts since the pool was created."""
        return int(self._stats.get(self._CONNECTIONS_ERRORS, 0))

    def connections_opened(self) -> int:
        """Physical connections opened (psycopg_pool counts attempts, failed ones included)."""
        return int(self._stats.get(self._CONNECTIONS_NUM, 0)) - self.connection_errors()

    def _connect(self, timeout: float | None = None) -> Any:
        # Runs on the pool's worker threads (or a caller growing the pool), never per checkout.
        try:
            connection = super()._connect(timeout)
        except Exception:
            self.connect_failing = True
            raise
        self.connect_failing = False
        return connection

    def _exhausted(self, started: float, *, queue_full: bool) -> PoolExhausted:
        waited = monotonic() - started
        self.ledger.count("rejected_total" if queue_full else "timeouts_total")
        state = self.state()
        in_use = f"{state['in_use']}/{state['max']} in use, {state['waiting']} waiting"
        if queue_full:
            head = f"pool {self.config.alias!r} refused a checkout: {state['waiting']} requests already waiting (max_waiting={self.max_waiting}; {in_use})"
        elif state["in_use"] < state["max"] and self.connection_errors():
            head = (
                f"pool {self.config.alias!r} could not get a connection after {waited:.1f} s "
                f"({in_use}; {self.connection_errors()} failed connection attempts: is the database reachable?)"
            )
        else:
            head = f"pool {self.config.alias!r} exhausted after {waited:.1f} s ({in_use})"
        holders = describe_holders(self)
        message = f"{head}: {holders}" if holders else head
        error_class = PoolQueueFull if queue_full else PoolExhausted
        return error_class(message, alias=self.config.alias, waited=waited, queue_full=queue_full)


_PLUMBING: frozenset[int] = frozenset()


def _plumbing_codes() -> frozenset[int]:
    """Django's connection-opening frames, the same under every checkout: not worth recording."""
    global _PLUMBING
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.backends.postgresql.base import DatabaseWrapper as PostgresWrapper
    from django.utils.asyncio import async_unsafe

    functions: list[Any] = [async_unsafe(lambda: None)]
    for cls in (BaseDatabaseWrapper, PostgresWrapper):
        for name in ("connect", "ensure_connection", "_cursor", "cursor", "get_new_connection"):
            function = cls.__dict__.get(name)
            if function is not None:
                functions.append(function)
                functions.append(getattr(function, "__wrapped__", function))
    try:
        from django_poolguard.backends.postgresql.base import DatabaseWrapper as GuardedWrapper
        from django_poolguard.backends.postgresql.base import TransactionReleasingWrapper

        functions.extend((GuardedWrapper.get_new_connection, TransactionReleasingWrapper.connect))
    except ImportError:  # pragma: no cover
        pass
    # By id: these functions live as long as their modules, so their code objects do too.
    _PLUMBING = frozenset(id(f.__code__) for f in functions if hasattr(f, "__code__"))
    return _PLUMBING


def describe_holders(pool: GuardedPool, limit: int = 3) -> str:
    """``"7 held by GET /api/report (oldest 42 s, reports/views.py:88 in report), 3 by ..."``."""
    groups: dict[str, list[Any]] = defaultdict(list)
    for checkout in pool.ledger.checkouts():  # oldest first
        groups[checkout.label].append(checkout)
    ranked = sorted(groups.items(), key=lambda item: (-len(item[1]), item[1][0].started))
    parts = []
    for index, (label, checkouts) in enumerate(ranked[:limit]):
        oldest = checkouts[0]
        where = oldest.origin or "no application frame"
        verb = "held by" if index == 0 else "by"
        # Escaped: the message reaches logs and error trackers, and thread names come from anywhere.
        parts.append(
            f"{len(checkouts)} {verb} {escape_controls(label)} (oldest {oldest.held:.0f} s, {where})"
        )
    if len(ranked) > limit:
        parts.append(f"{sum(len(c) for _, c in ranked[limit:])} by {len(ranked) - limit} others")
    return ", ".join(parts)


# --- This process's pools -------------------------------------------------------------------

_pools: dict[str, GuardedPool] = {}
# Serializes pool creation so concurrent first checkouts on one alias build a single pool.
_pools_lock = threading.Lock()
# Pools and connections inherited from a parent process. Their sockets now point at /dev/null
# (see _after_fork_in_child); they are kept referenced so nothing tries to tidy them up.
_inherited: list[Any] = []
_pool_created_hooks: list[Callable[[GuardedPool], None]] = []
# Set in processes that own their pools until exit (Celery workers): see keep_pools_open().
_keep_open = False


def get_pool(alias: str) -> GuardedPool | None:
    return _pools.get(alias)


def get_or_create_pool(alias: str, factory: Callable[[], GuardedPool]) -> GuardedPool:
    pool = _pools.get(alias)
    if pool is not None:
        return pool
    with _pools_lock:
        pool = _pools.get(alias)
        if pool is None:
            pool = _pools[alias] = factory()
            created = True
        else:
            created = False
    if created:
        for hook in list(_pool_created_hooks):
            hook(pool)
    return pool


def on_pool_created(hook: Callable[[GuardedPool], None]) -> None:
    """Call ``hook(pool)`` for every pool created from now on (the watchdog starts this way)."""
    if hook not in _pool_created_hooks:
        _pool_created_hooks.append(hook)


def discard_pool(alias: str, pool: GuardedPool | None = None) -> GuardedPool | None:
    """Forget the alias's pool (only if it is still ``pool``, when given) and return it."""
    with _pools_lock:
        current = _pools.get(alias)
        if current is None or (pool is not None and current is not pool):
            return None
        return _pools.pop(alias)


def all_pools() -> dict[str, GuardedPool]:
    return dict(_pools)


def keep_pools_open(keep: bool = True) -> None:
    """Make this process own its pools until it exits: ``close_pool()`` on a guarded alias then
    returns only the calling thread's connection and keeps the pool.

    Celery's Django fixup calls ``close_pool()`` after every task in a prefork child, which turns a
    pool into one new connection per task (celery#10554); :mod:`django_poolguard.celery` calls this
    in each worker process and closes the pools itself with :func:`close_all_pools` at shutdown.
    """
    global _keep_open
    _keep_open = keep


def pools_kept_open() -> bool:
    return _keep_open


def close_all_pools(timeout: float = 5.0) -> None:
    """Close every pool of this process (process shutdown): sessions end cleanly on the server."""
    for alias in list(_pools):
        pool = discard_pool(alias)
        if pool is not None:
            try:
                pool.close(timeout=timeout)
            except Exception:
                logger.exception("Closing the pool of alias %r at shutdown failed.", alias)


def silence_inherited(connection: Any) -> None:
    """Point an inherited connection's socket at /dev/null in this process only.

    Closing it would send PostgreSQL a Terminate on the parent's session; letting it be
    garbage-collected would do the same. After dup2 the parent's socket is untouched and
    whatever libpq later writes here goes nowhere.
    """
    try:
        fd = connection.pgconn.socket
    except Exception:
        return
    if fd is None or fd < 0:
        return
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
    _inherited.append(connection)


def _after_fork_in_child() -> None:
    inherited = list(_pools.values())
    _pools.clear()
    for pool in inherited:
        _inherited.append(pool)
        for connection in list(pool._pool):
            silence_inherited(connection)
        for checkout in pool.ledger.checkouts():
            silence_inherited(checkout.connection)
    if inherited:
        _forget_wrapper_connections(inherited)


def _forget_wrapper_connections(inherited: list[GuardedPool]) -> None:
    """The forking thread's Django wrappers may hold a parent connection: drop it."""
    from django.db import connections

    from django_poolguard.backends.postgresql.base import DatabaseWrapper

    for wrapper in connections.all(initialized_only=True):
        connection = getattr(wrapper, "connection", None)
        if connection is not None and getattr(connection, "_pool", None) in inherited:
            silence_inherited(connection)
            if isinstance(wrapper, DatabaseWrapper):  # only ours hand out GuardedPool connections
                wrapper.forget_connection()


os.register_at_fork(after_in_child=_after_fork_in_child)
# At exit, close the pools while the interpreter still works: left to psycopg_pool's __del__,
# each pool joins its threads with a 5 s timeout during shutdown (20 s exits on Python 3.13).
atexit.register(close_all_pools, 1.0)

__all__ = [
    "GuardedPool",
    "PoolClosed",
    "all_pools",
    "close_all_pools",
    "describe_holders",
    "discard_pool",
    "get_or_create_pool",
    "get_pool",
    "keep_pools_open",
    "on_pool_created",
    "pools_kept_open",
]
