"""A connection outside the pool, for poolguard's own writes and reads (leak events,
published snapshots, ``pg_stat_activity``).

It never takes a slot of the pool it watches, so it works exactly when the pool is
exhausted, and it fails fast (short connect and statement timeouts) instead of blocking
the watchdog. One per alias and process, opened lazily, reopened after an error, used
under a lock. It counts as one out-of-pool connection per process in ``poolbudget``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

from django_poolguard import _compat
from django_poolguard.conf import hostname
from django_poolguard.engine.pool import silence_inherited

CONNECT_TIMEOUT = 2  # s
STATEMENT_TIMEOUT_MS = 5000

_connections: dict[str, psycopg.Connection[Any]] = {}
# Guards _connections and serializes use: the watchdog and a management command may share one.
_lock = threading.RLock()


def connection_params(alias: str) -> dict[str, Any]:
    """The alias's own libpq parameters (the engine's, ``OPTIONS["options"]`` included, so
    ``search_path`` and friends match the alias), labelled as poolguard's session, with its timeouts.
    """
    from django.db import connections

    wrapper = connections[alias]
    params = dict(wrapper.get_connection_params())
    params.pop("cursor_factory", None)
    params.pop("context", None)
    params.pop("prepare_threshold", None)
    params["application_name"] = f"poolguard:{alias}:{hostname()}:{os.getpid()}"[:63]
    params["connect_timeout"] = CONNECT_TIMEOUT
    if _timeouts_via(alias) == "startup":
        # Appended: the server applies -c options in order, so this one wins over the alias's own
        # statement_timeout while everything else the user set (search_path, ...) still applies.
        timeout = f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"
        params["options"] = f"{params['options']} {timeout}" if params.get("options") else timeout
    # Otherwise a pooler such as PgBouncer refuses "options": connect() SETs the timeout for
    # "set" (a session of its own), and "server" leaves it to the server, as for the alias.
    params["autocommit"] = True
    return params


def connect(alias: str) -> psycopg.Connection[Any]:
    """A new connection made exactly as the alias makes its own: same parameters, then the
    engine's session setup (the time zone, ``OPTIONS["assume_role"]``)."""
    from django.db import connections

    wrapper = connections[alias]
    connection = psycopg.connect(**connection_params(alias))
    try:
        if _timeouts_via(alias) == "set":
            connection.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
        _compat.configure_timezone(wrapper, connection)
        # Not Django's _configure_role: it composes the statement through the wrapper's own
        # connection, which would take a slot of the pool this connection exists to bypass.
        role = wrapper.settings_dict["OPTIONS"].get("assume_role")
        if role:
            connection.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
    except BaseException:
        connection.close()
        raise
    return connection


def _timeouts_via(alias: str) -> str:
    from django.db import connections

    config = getattr(connections[alias], "guard_config", None)
    return config.timeouts_via if config is not None else "startup"


@contextmanager
def side_cursor(alias: str = "default") -> Iterator[psycopg.Cursor[Any]]:
    """A cursor on poolguard's own connection to ``alias`` (autocommit).

    Raises ``psycopg.Error`` when the database cannot be reached; callers log and move on.
    """
    with _lock:
        connection = _connections.get(alias)
        if connection is None or connection.closed:
            connection = _connections[alias] = connect(alias)
        try:
            with connection.cursor() as cursor:
                yield cursor
        except psycopg.Error:
            _connections.pop(alias, None)
            connection.close()
            raise


def reset_after_fork() -> None:
    """In a forked child (the runtime calls this): the parent's connections are silenced, not closed."""
    global _lock
    _lock = threading.RLock()
    for connection in _connections.values():
        silence_inherited(connection)
    _connections.clear()


def close_all() -> None:
    with _lock:
        for connection in _connections.values():
            connection.close()
        _connections.clear()
