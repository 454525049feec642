"""``ENGINE: "django_poolguard.backends.postgresql"``: Django's PostgreSQL backend with a guarded pool.

Only the hooks that matter are overridden: the pool is a :class:`~django_poolguard.engine.pool.GuardedPool`
kept in a fork-aware registry, sessions are labelled and get their timeouts at connect time,
and each checkout learns which wrapper holds it and when its transaction began.
"""

from __future__ import annotations

import logging
import os
import weakref
from time import monotonic
from typing import Any

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.db.backends.postgresql import base as postgresql
from django.db.backends.utils import CursorDebugWrapper, CursorWrapper
from django.db.utils import DEFAULT_DB_ALIAS, DatabaseErrorWrapper
from django.utils.functional import cached_property

from django_poolguard._compat import called_by_django_connect, connection_pool, initial_state
from django_poolguard.backends.postgresql.creation import DatabaseCreation
from django_poolguard.backends.postgresql.cursor import TimedCursorDebugWrapper, TimedCursorWrapper
from django_poolguard.backends.postgresql.validation import FIX, W011, DatabaseValidation, without_app
from django_poolguard.conf import AliasConfig, guard_settings, hostname, pool_findings
from django_poolguard.engine import stacks
from django_poolguard.engine.pool import (
    GuardedPool,
    _pools,
    discard_pool,
    get_or_create_pool,
    pool_class,
    pools_kept_open,
    register_backend,
    wrapper_collected,
)
from django_poolguard.engine.session_timeouts import configure_session, timeout_settings
from django_poolguard.exceptions import PoolExhausted

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


class DatabaseWrapper(postgresql.DatabaseWrapper):
    creation_class = DatabaseCreation
    validation_class = DatabaseValidation

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

    @property
    def pool(self) -> GuardedPool | None:
        # Read several times per checkout by Django: the common case is three dict lookups. A
        # wrapper whose own OPTIONS say "no pool" bypasses its alias's pool, as in Django.
        pool = _pools.get(self.alias)
        if pool is not None and self.settings_dict["OPTIONS"].get("pool"):
            return pool
        pool_options = self.settings_dict["OPTIONS"].get("pool")
        if self.alias == NO_DB_ALIAS or not pool_options:
            return None
        return get_or_create_pool(self.alias, lambda: self._build_pool(pool_options))

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
        connection = super().get_new_connection(conn_params)
        pool = connection_pool(connection)
        if isinstance(pool, GuardedPool):
            checkout = pool.ledger.get(connection)
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
        checkout = self._guard_checkout
        if checkout is not None:
            checkout.last_used = monotonic()
        return super().create_cursor(name)

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
        return CursorDebugWrapper(cursor, self)

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
                    stacks.capture(1, guard_settings.STACK_DEPTH) if guard_settings.CAPTURE_STACKS else ()
                )
            if self.connection.autocommit == autocommit:
                # Django sets autocommit on every checkout; a pooled connection usually has it
                # already, and psycopg would still take its lock and run a generator to say so.
                return
        super()._set_autocommit(autocommit)  # type: ignore[misc]


# The pool registry forgets our wrappers' inherited connections after fork, and acquire stacks
# leave out this connection-opening frame, without the engine importing the backend.
register_backend(DatabaseWrapper, DatabaseWrapper.get_new_connection)

__all__ = ["DEFAULT_DB_ALIAS", "DatabaseWrapper", "application_name", "session_options"]
