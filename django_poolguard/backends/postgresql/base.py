"""``ENGINE: "django_poolguard.backends.postgresql"``: Django's PostgreSQL backend with a guarded pool.

Only the hooks that matter are overridden: the pool is a :class:`~django_poolguard.engine.pool.GuardedPool`
kept in a fork-aware registry, sessions are labelled and get their timeouts at connect time,
and each checkout learns which wrapper holds it and when its transaction began.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from time import monotonic
from typing import Any

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.postgresql import base as postgresql
from django.db.backends.utils import CursorWrapper
from django.db.utils import DEFAULT_DB_ALIAS, DatabaseErrorWrapper
from django.utils.functional import cached_property
from psycopg.pq import TransactionStatus

from django_poolguard._compat import (
    called_by_django_connect,
    connection_pool,
    initial_state,
    on_commit_pending,
    running_loop,
)
from django_poolguard.backends.postgresql.async_check import cheap_async_checks, django_method, refuse
from django_poolguard.backends.postgresql.creation import DatabaseCreation
from django_poolguard.backends.postgresql.cursor import TimedCursorDebugWrapper, TimedCursorWrapper
from django_poolguard.backends.postgresql.release import (
    HELD_BY_CODE,
    HELD_TRANSACTION,
    ReleasingCursorDebugWrapper,
    ReleasingCursorWrapper,
    TimedReleasingCursorDebugWrapper,
    TimedReleasingCursorWrapper,
    holding,
    needs_session,
)
from django_poolguard.backends.postgresql.validation import FIX, W011, DatabaseValidation, without_app
from django_poolguard.conf import AliasConfig, guard_settings, hostname, pool_findings
from django_poolguard.engine import stacks
from django_poolguard.engine.pool import (
    GuardedPool,
    discard_pool,
    get_or_create_pool,
    get_pool,
    pool_class,
    pools_kept_open,
    register_backend,
    registry,
    wrapper_collected,
)
from django_poolguard.engine.session_timeouts import configure_session, timeout_settings
from django_poolguard.exceptions import PoolExhausted

_TRANSACTION_IDLE = TransactionStatus.IDLE
# Django's own, called without its @async_unsafe: the overrides below make that check.
_GET_NEW_CONNECTION = django_method(postgresql.DatabaseWrapper.get_new_connection)
_CREATE_CURSOR = django_method(postgresql.DatabaseWrapper.create_cursor)
_CONNECT = django_method(BaseDatabaseWrapper.connect)
NO_DB_ALIAS: str = postgresql.NO_DB_ALIAS  # type: ignore[attr-defined]
APPLICATION_NAME_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1
logger = logging.getLogger("django_poolguard")


def application_name(config: AliasConfig, pid: int) -> str:
    """``<workload>:<alias>:<host>:<pid>``, cut to what PostgreSQL keeps (63 bytes)."""
    name = f"{config.workload}:{config.alias}:{hostname()}:{pid}"
    return name.encode()[:APPLICATION_NAME_BYTES].decode(errors="ignore")


def session_options(config: AliasConfig, user_options: str | None) -> str | None:
    """The libpq ``options`` string with the alias's timeouts, applied by the server at connect time.

    Only with ``timeouts_via = "startup"``; otherwise the user's options alone.
    """
    parts = [user_options] if user_options else []
    if config.timeouts_via == "startup":
        parts.extend(f"-c {name}={ms}" for name, ms in timeout_settings(config).items())
    return " ".join(parts) or None


class GuardedErrorWrapper(DatabaseErrorWrapper):
    """Django's error translation, letting :class:`PoolExhausted` through unchanged.

    ``PoolExhausted`` is both Django's ``OperationalError`` and psycopg_pool's ``PoolTimeout``
    (a psycopg error, as Django's own backend raises). Django would translate the psycopg side
    into a bare ``OperationalError``, losing the holders and the type the middleware turns into 503.
    """

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        if exc_type is None:
            return
        if issubclass(exc_type, PoolExhausted):
            self.wrapper.errors_occurred = True  # type: ignore[attr-defined]  # as Django does for OperationalError
            return  # re-raised as is: it already is a Django error
        super().__exit__(exc_type, exc_value, traceback)


class _PoolAttribute:
    """``DatabaseWrapper.pool``: the alias's pool, kept in the wrapper's ``__dict__`` once found.

    A non-data descriptor, so once a wrapper holds its pool as a plain attribute, Django's reads
    never come here again. The pool is dropped from every wrapper that keeps it when the registry
    forgets or replaces it (``close_pool()``, a wedged pool rebuilt, a fork), and the next read
    resolves it again. A wrapper's ``OPTIONS["pool"]`` is read when it resolves the pool: turning
    pooling off on a live wrapper takes effect after ``close_pool()``.
    """

    def __get__(self, wrapper: DatabaseWrapper | None, owner: type | None = None) -> Any:
        if wrapper is None:
            return self
        return wrapper._resolve_pool()


# Wrappers keeping their alias's pool as an attribute, by alias (each thread has its own wrappers).
_keepers: dict[str, weakref.WeakSet[DatabaseWrapper]] = {}
_keepers_lock = threading.Lock()


def _keep_pool(wrapper: DatabaseWrapper, pool: GuardedPool) -> None:
    with _keepers_lock:
        # Only a pool still current: one forgotten meanwhile would otherwise stay kept.
        if get_pool(wrapper.alias) is pool:
            wrapper.__dict__["pool"] = pool
            _keepers.setdefault(wrapper.alias, weakref.WeakSet()).add(wrapper)


def _drop_kept_pools(alias: str | None) -> None:
    """The registry's ``pool_forgotten`` hook: the alias's wrappers (every wrapper, for None)
    resolve their pool again at their next read."""
    global _keepers_lock
    if alias is None:  # after fork, in the child: a lock a parent's thread held stays held here
        _keepers_lock = threading.Lock()
    with _keepers_lock:
        for name in list(_keepers) if alias is None else [alias]:
            for wrapper in list(_keepers.pop(name, ())):
                wrapper.__dict__.pop("pool", None)


registry.pool_forgotten.append(_drop_kept_pools)


# Django's @async_unsafe methods (connect(), cursor(), close()...): Django's functions behind the
# same check, made without raising and catching an exception (async_check.py).
@cheap_async_checks(postgresql.DatabaseWrapper)
class DatabaseWrapper(postgresql.DatabaseWrapper):
    creation_class = DatabaseCreation
    validation_class = DatabaseValidation

    def __new__(cls, settings_dict: Any = None, *args: Any, **kwargs: Any) -> DatabaseWrapper:
        # The release mode picks the class, once per wrapper, from the settings as written (they
        # are checked when it connects): an alias in "request" mode runs none of the release code.
        # (No settings: copy.copy() rebuilding an existing wrapper, which keeps its class.)
        if settings_dict is not None and (cls is DatabaseWrapper or cls is TransactionReleasingWrapper):
            cls = (
                TransactionReleasingWrapper
                if release_mode(settings_dict) == "transaction"
                else DatabaseWrapper
            )
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard_checkout: Any = None  # the ledger entry of self.connection, when pooled
        # Handed to each checkout: made once, not per checkout. Its callback asks the watchdog to
        # reclaim soon when this wrapper is garbage-collected while a checkout still refers to it.
        self._guard_ref = weakref.ref(self, wrapper_collected)
        self._guard_config: tuple[Any, AliasConfig] | None = None

    @property
    def guard_config(self) -> AliasConfig:
        """This alias's guard options, parsed once per settings dict (tests swap it)."""
        cached = self._guard_config
        if cached is None or cached[0] is not self.settings_dict:
            cached = self._guard_config = (
                self.settings_dict,
                AliasConfig.from_settings_dict(self.alias, self.settings_dict),
            )
        return cached[1]

    @cached_property
    def wrap_database_errors(self) -> GuardedErrorWrapper:
        return GuardedErrorWrapper(self)

    # Django reads ``pool`` eight times per checkout; as a property each read cost about 2,000
    # CPU instructions (a Python call), 16,000 per checkout. See _PoolAttribute.
    pool = _PoolAttribute()

    def _resolve_pool(self) -> GuardedPool | None:
        # A wrapper whose own OPTIONS say "no pool" bypasses its alias's pool, as in Django.
        pool_options = self.settings_dict["OPTIONS"].get("pool")
        if self.alias == NO_DB_ALIAS or not pool_options:
            return None
        pool = get_or_create_pool(self.alias, lambda: self._build_pool(pool_options))
        _keep_pool(self, pool)
        return pool

    def __getstate__(self) -> dict[str, Any]:
        # A copy (copy.copy, deepcopy) resolves the pool anew: it is not among the wrappers told
        # when the pool goes.
        state = dict(self.__dict__)
        state.pop("pool", None)
        return state

    def _build_pool(self, pool_options: Any) -> GuardedPool:
        if self.settings_dict.get("CONN_MAX_AGE", 0) != 0:
            # Django's own sentence first: code and tests written for Django's backend match on it.
            raise ImproperlyConfigured(
                f"Pooling doesn't support persistent connections. DATABASES[{self.alias!r}]: set "
                "CONN_MAX_AGE to 0 when OPTIONS['pool'] is set; the pool already keeps connections open."
            )
        findings = pool_findings(self.alias, pool_options)
        if findings:  # the words of system check E003, not a TypeError from psycopg_pool
            raise findings[0].error()
        options = {} if pool_options is True else dict(pool_options)  # a copy: never mutate settings
        options.setdefault("name", self.alias)
        # OPTIONS["pool"]["check"] wins over CONN_HEALTH_CHECKS, as in Django >= 6.1.
        enable_checks = self.settings_dict["CONN_HEALTH_CHECKS"]
        options.setdefault("check", GuardedPool.check_connection if enable_checks else None)
        connect_kwargs = self.get_connection_params()
        connect_kwargs["autocommit"] = True  # as Django: it sets autocommit itself later
        pool = pool_class(self.guard_config)(
            kwargs=connect_kwargs,
            open=False,  # opened on first checkout, never at import or startup
            configure=self._configure_connection,  # type: ignore[attr-defined]
            config=self.guard_config,
            **options,
        )
        if not apps.is_installed("django_poolguard"):
            logger.warning("%s %s (system check %s)", without_app(self.alias), FIX, W011)
        # Imported here: the runtime sits above the engine (it knows every layer). With the app it
        # exists since AppConfig.ready(); without it (W011) this first pool creates it, for its fork
        # handler and exit hook.
        from django_poolguard.runtime import get_runtime

        get_runtime()
        return pool

    def close_pool(self) -> None:
        if pools_kept_open():
            # A Celery worker owns its pools until it exits (see pool.keep_pools_open): Celery's
            # Django fixup calls close_pool() after every task in a prefork child, which would make
            # every task open a new connection. Give back this thread's connection, as the caller
            # intends, and keep the pool; the runtime closes it at exit.
            self.close()
            return
        pool = discard_pool(self.alias)
        if pool is not None:
            pool.close()

    def get_connection_params(self) -> dict[str, Any]:
        if called_by_django_connect() and self.pool is not None:
            # Django's connect() builds these on every checkout and ignores them when pooled.
            return {}
        params: dict[str, Any] = super().get_connection_params()
        params.pop("poolguard", None)
        if self.alias == NO_DB_ALIAS:
            return params
        config = self.guard_config
        params.setdefault("application_name", application_name(config, os.getpid()))
        options = session_options(config, params.get("options"))
        if options:
            params["options"] = options
        return params

    def _configure_connection(self, connection: Any) -> bool:
        # Once per physical connection: from the pool's configure callback, or from
        # init_connection_state when unpooled. Never per checkout.
        commit: bool = super()._configure_connection(connection)  # type: ignore[misc]
        if self.alias == NO_DB_ALIAS:
            return commit
        config = self.guard_config
        if config.timeouts_via == "startup":
            return commit
        return configure_session(connection, config, self.get_connection_params()) or commit

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        if running_loop() is not None:
            refuse(_GET_NEW_CONNECTION.message)
        django = postgresql.DatabaseWrapper.get_new_connection  # replaced by a test's patch?
        get_new = _GET_NEW_CONNECTION.function if django is _GET_NEW_CONNECTION.decorated else django
        connection = get_new(self, conn_params)
        pool = connection_pool(connection)
        if isinstance(pool, GuardedPool):
            checkout = pool.ledger.checkout_of(id(connection))
            if checkout is not None:
                checkout.wrapper_ref = self._guard_ref
            self._guard_checkout = checkout
        return connection

    def forget_connection(self) -> None:
        """Drop ``self.connection`` without returning it, and reset the transaction state.

        For when the pool already has the slot back (reclaimed from a dead holder, returned
        at a task's end) or the connection belongs to a parent process (after fork): every
        connection and transaction attribute is left as Django's own ``__init__`` sets it.
        """
        self._guard_checkout = None
        self.__dict__.update(initial_state(self.settings_dict, self.alias))

    def _close(self) -> None:
        self._guard_checkout = None
        super()._close()  # type: ignore[misc]

    def create_cursor(self, name: Any = None) -> Any:
        if running_loop() is not None:
            refuse(_CREATE_CURSOR.message)
        checkout = self._guard_checkout
        if checkout is not None:
            checkout.last_used = monotonic()
        django = postgresql.DatabaseWrapper.create_cursor  # replaced by a test's patch?
        return (_CREATE_CURSOR.function if django is _CREATE_CURSOR.decorated else django)(self, name)

    # The pool-time profile times statements and commits while the connection is checked out.
    # (Django's classes built here rather than through super(): one call less per cursor; the
    # canary of _compat.DJANGO_CURSOR_CLASSES checks Django still builds these.)
    def make_cursor(self, cursor: Any) -> Any:
        if self._guard_checkout is not None and guard_settings.PROFILE:
            return TimedCursorWrapper(cursor, self)
        return CursorWrapper(cursor, self)

    def make_debug_cursor(self, cursor: Any) -> Any:
        if self._guard_checkout is not None and guard_settings.PROFILE:
            return TimedCursorDebugWrapper(cursor, self)
        return postgresql.CursorDebugWrapper(cursor, self)

    def _commit(self) -> None:
        checkout = self._guard_checkout
        if checkout is None:
            return super()._commit()  # type: ignore[misc,no-any-return]
        started = monotonic()
        try:
            return super()._commit()  # type: ignore[misc,no-any-return]
        finally:
            checkout.db_time += monotonic() - started

    def _set_autocommit(self, autocommit: bool) -> None:
        checkout = self._guard_checkout
        if checkout is not None:
            if autocommit:
                if checkout.tx_started is not None:  # the profile's time in transaction
                    checkout.tx_time += monotonic() - checkout.tx_started
                checkout.tx_started = checkout.tx_stack = None
            else:
                checkout.tx_started = checkout.last_used = monotonic()
                checkout.tx_stack = (
                    # From the caller of set_autocommit() (Django's, and the release mode's override).
                    stacks.capture(1, guard_settings.STACK_DEPTH, _SET_AUTOCOMMIT_CODES)
                    if guard_settings.CAPTURE_STACKS
                    else ()
                )
            if self.connection.autocommit == autocommit:
                # Django sets autocommit on every checkout; a pooled connection usually has it
                # already, and psycopg would still take its lock and run a generator to say so.
                return
        super()._set_autocommit(autocommit)  # type: ignore[misc]


class TransactionReleasingWrapper(DatabaseWrapper):
    """The wrapper of an alias with ``OPTIONS["poolguard"]["release"] = "transaction"``: it gives its
    connection back to the pool whenever it is idle in autocommit (see :meth:`release_if_idle`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard_releasing = False  # connected, outside connect(), on a guarded pool
        self._guard_pinned: str | None = None  # why this session must stay checked out, if it must
        self._guard_open_cursors: weakref.WeakSet[Any] = weakref.WeakSet()
        # Cursors being made (between ensure_connection() and create_cursor()): a query made on the
        # way, e.g. by code wrapping ensure_connection(), must not give the connection back.
        self._guard_opening_cursors = 0

    def __repr__(self) -> str:
        # The engine's class, as Django and code matching on it know it.
        return f"<DatabaseWrapper vendor={self.vendor!r} alias={self.alias!r}>"

    def _cursor(self, name: Any = None) -> Any:
        self._guard_opening_cursors += 1
        try:
            return super()._cursor(name)  # type: ignore[misc]
        finally:
            self._guard_opening_cursors -= 1

    def connect(self) -> None:
        if running_loop() is not None:  # before any state is touched
            refuse(_CONNECT.message)
        # A new checkout: no pin, no open cursor. Never released while connecting: the
        # connection_created receivers query.
        self._guard_releasing = False
        self._guard_pinned = None
        self._guard_open_cursors.clear()
        super().connect()
        checkout = self._guard_checkout
        self._guard_releasing = (
            checkout is not None and connection_pool(checkout.connection).config.release == "transaction"
        )

    # Releasing cursors, timed as well when the pool-time profile is on.
    def make_cursor(self, cursor: Any) -> Any:
        if self._guard_releasing:
            if guard_settings.PROFILE:
                return TimedReleasingCursorWrapper(cursor, self)
            return ReleasingCursorWrapper(cursor, self)
        return super().make_cursor(cursor)

    def make_debug_cursor(self, cursor: Any) -> Any:
        if self._guard_releasing:
            if guard_settings.PROFILE:
                return TimedReleasingCursorDebugWrapper(cursor, self)
            return ReleasingCursorDebugWrapper(cursor, self)
        return super().make_debug_cursor(cursor)

    def cursor_opened(self, cursor: Any) -> None:
        self._guard_open_cursors.add(cursor)

    def cursor_closed(self, cursor: Any) -> None:
        self._guard_open_cursors.discard(cursor)
        self.release_if_idle()

    def cursor_exhausted(self, cursor: Any) -> None:
        self.release_if_idle()

    def pin_connection(self, reason: str) -> None:
        """Keep this checkout until the request or task ends: ``reason`` left state in the session."""
        checkout = self._guard_checkout
        if self._guard_pinned is not None or checkout is None:
            return
        self._guard_pinned = checkout.held_reason = reason
        connection_pool(self.connection).ledger.count_pinned(reason)

    def release_if_idle(self) -> bool:
        """Return the connection to the pool if nothing needs its session; say why not otherwise.

        Only in ``transaction`` release mode, outside any atomic block, in autocommit, with no
        on-commit callback pending, no pin, no ``hold_connection()``, no server-side cursor or
        cursor with unread rows open, and the server agreeing no transaction is open. The next
        query checks a connection out again.
        """
        checkout = self._guard_checkout
        connection = self.connection
        if (
            not self._guard_releasing
            or self._guard_opening_cursors
            or checkout is None
            or connection is None
            or self.in_atomic_block
            or not self.autocommit
            or on_commit_pending(self)
        ):
            return False
        reason = self._guard_pinned or (HELD_BY_CODE if holding() else None)
        if reason is None:
            reason = needs_session(iter(list(self._guard_open_cursors)))
        if reason is None and connection.info.transaction_status != _TRANSACTION_IDLE:
            reason = HELD_TRANSACTION  # begun by raw SQL Django does not know about
        if reason is not None:
            checkout.held_reason = reason
            return False
        ledger = connection_pool(connection).ledger
        self.close()  # Django's pooled close(): putconn, and self.connection = None
        ledger.count_release()
        return True

    def set_autocommit(
        self, autocommit: bool, force_begin_transaction_with_broken_autocommit: bool = False
    ) -> None:
        # The outermost atomic block ends here (after its commit or rollback and on-commit
        # callbacks): the moment a transaction-scoped checkout goes back.
        checkout = self._guard_checkout
        ended = (
            autocommit and self._guard_releasing and checkout is not None and checkout.tx_started is not None
        )
        super().set_autocommit(autocommit, force_begin_transaction_with_broken_autocommit)
        if ended:
            self.release_if_idle()


def release_mode(settings_dict: Any) -> Any:
    """``OPTIONS["poolguard"]["release"]`` as written (``None`` when unset or unreadable)."""
    guard = (settings_dict.get("OPTIONS") or {}).get("poolguard")
    return guard.get("release") if isinstance(guard, dict) else None


# The frames between _set_autocommit() and the code that began the transaction.
_SET_AUTOCOMMIT_CODES = frozenset(
    {id(BaseDatabaseWrapper.set_autocommit.__code__), id(TransactionReleasingWrapper.set_autocommit.__code__)}
)

# The pool registry forgets our wrappers' inherited connections after fork (TransactionReleasingWrapper
# is a DatabaseWrapper), and acquire stacks leave out the connection-opening methods of this class and
# its subclasses (their overrides and cheap async checks), without the engine importing the backend.
register_backend(DatabaseWrapper)

__all__ = [
    "DEFAULT_DB_ALIAS",
    "DatabaseWrapper",
    "TransactionReleasingWrapper",
    "application_name",
    "release_mode",
    "session_options",
]
