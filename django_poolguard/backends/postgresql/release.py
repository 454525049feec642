"""Transaction-scoped checkouts: what may give a connection back between transactions.

With ``OPTIONS["poolguard"]["release"] = "transaction"`` a wrapper returns its connection to the
pool whenever it is idle in autocommit (see ``DatabaseWrapper.release_if_idle``). This module holds
what decides "idle": the cursors that still need the session, the SQL that leaves state in it
(which pins the connection until the request or task ends), and :func:`hold_connection`, the
opt-out for code that relies on session state.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Iterator
from contextlib import ContextDecorator
from typing import Any

from django.db.backends.postgresql.base import CursorDebugWrapper
from django.db.backends.utils import CursorWrapper
from psycopg import ServerCursor

from django_poolguard.backends.postgresql.cursor import TimedCursorDebugWrapper, TimedCursorWrapper

# Statements whose effect outlives the transaction that ran them, and the reason shown while a
# connection is pinned by one. Searched only in transaction mode; the cheap test first.
_SESSION_SQL = re.compile(
    r"""
      (?P<advisory_lock>\bpg_(?:try_)?advisory_lock(?:_shared)?\s*\()
    | (?P<listen>^\s*LISTEN\b)
    | (?P<temporary_table>^\s*CREATE\s+(?:(?:GLOBAL|LOCAL)\s+)?TEMP(?:ORARY)?\b)
    | (?P<set>^\s*(?:SET\s+(?!LOCAL\b|TRANSACTION\b|CONSTRAINTS\b)|RESET\b)
               |\bset_config\s*\([^;]*,\s*false\s*\))
    | (?P<prepared_statement>^\s*PREPARE\b)
    | (?P<cursor_with_hold>^\s*DECLARE\b.*\bWITH\s+HOLD\b)
    """,
    re.IGNORECASE | re.VERBOSE | re.DOTALL,
)
_REASONS = {
    "advisory_lock": "session advisory lock",
    "listen": "LISTEN",
    "temporary_table": "temporary table",
    "set": "SET by the application",
    "prepared_statement": "prepared statement",
    "cursor_with_hold": "cursor WITH HOLD",
}
#: Every reason a connection may be pinned for the rest of its request or task.
PIN_REASONS = tuple(_REASONS.values())

HELD_SERVER_SIDE_CURSOR = "server-side cursor open"
HELD_UNREAD_ROWS = "cursor with unread rows open"
HELD_TRANSACTION = "transaction open"
HELD_BY_CODE = "hold_connection()"


def session_state(sql: Any) -> str | None:
    """The pin reason if ``sql`` leaves state in the session beyond its transaction, else ``None``."""
    if not isinstance(sql, str):
        sql = str(sql)  # psycopg's sql.Composed and the like
    match = _SESSION_SQL.search(sql)
    if match is None:
        return None
    return _REASONS[match.lastgroup or ""]


# Code inside hold_connection(): its wrappers keep their connection, as in "request" mode.
_holding: contextvars.ContextVar[int] = contextvars.ContextVar("poolguard_hold_connection", default=0)


def holding() -> bool:
    return _holding.get() > 0


class hold_connection(ContextDecorator):
    """Keep this code's connections for the whole block (or decorated view or task).

    For code that relies on session state across transactions on an alias in ``transaction``
    release mode: a ``SET`` issued through a driver call, a cursor kept open across queries, a
    connection object handed to a library. On leaving the outermost block, idle connections go back
    to the pool as usual.
    """

    def __enter__(self) -> hold_connection:
        self._token = _holding.set(_holding.get() + 1)
        return self

    def __exit__(self, *exc: Any) -> None:
        _holding.reset(self._token)
        if not holding():
            release_idle_connections()


def release_idle_connections() -> None:
    """Give back every idle connection of this thread's wrappers in ``transaction`` mode."""
    from django.db import connections  # the handler loading this ENGINE: asked for when called

    for wrapper in connections.all(initialized_only=True):
        release = getattr(wrapper, "release_if_idle", None)
        if release is not None:
            release()


def unread_rows(cursor: Any) -> bool:
    """Does this psycopg cursor have rows left to fetch from its current result?"""
    position = cursor.rownumber
    return position is not None and position < cursor.pgresult.ntuples


def needs_session(cursors: Iterator[Any]) -> str | None:
    """Why one of these open cursor wrappers still needs the session, or ``None``."""
    for wrapper in cursors:
        cursor = wrapper.cursor
        if cursor.closed:
            continue
        if isinstance(cursor, ServerCursor):
            return HELD_SERVER_SIDE_CURSOR
        if unread_rows(cursor):
            return HELD_UNREAD_ROWS
    return None


class ReleasingCursorMixin:
    """A cursor wrapper that tells its database wrapper when it is done with the connection.

    Used only on aliases in ``transaction`` mode. A cursor kept after its connection went back is
    bound to a fresh checkout when it executes again.
    """

    cursor: Any
    db: Any

    def __init__(self, cursor: Any, db: Any) -> None:
        super().__init__(cursor, db)  # type: ignore[call-arg]
        db.cursor_opened(self)

    def execute(self, sql: Any, params: Any = None) -> Any:
        self._bind(sql)
        return super().execute(sql, params)  # type: ignore[misc]

    def executemany(self, sql: Any, param_list: Any) -> Any:
        self._bind(sql)
        return super().executemany(sql, param_list)  # type: ignore[misc]

    def copy(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        self._bind(statement)
        # Django's debug wrapper logs COPY; the plain one reaches psycopg's cursor.copy().
        copy = getattr(super(), "copy", None) or self.cursor.copy
        return copy(statement, *args, **kwargs)

    def _bind(self, sql: Any) -> None:
        db = self.db
        if not self.cursor.closed and (db.connection is None or self.cursor.connection is not db.connection):
            # Its connection went back to the pool after an earlier statement: take one again.
            db.ensure_connection()
            self.cursor = db.create_cursor()
            db.cursor_opened(self)
        reason = session_state(sql)
        if reason is not None:
            db.pin_connection(reason)

    def close(self) -> None:
        try:
            self.cursor.close()
        finally:
            self.db.cursor_closed(self)

    def __iter__(self) -> Iterator[Any]:
        yield from super().__iter__()  # type: ignore[misc]
        self.db.cursor_exhausted(self)

    def fetchall(self) -> Any:
        rows = self.db.wrap_database_errors(self.cursor.fetchall)()
        self.db.cursor_exhausted(self)
        return rows


class ReleasingCursorWrapper(ReleasingCursorMixin, CursorWrapper):
    pass


class ReleasingCursorDebugWrapper(ReleasingCursorMixin, CursorDebugWrapper):
    pass


# With the pool-time profile on: each statement timed on the checkout it ran on (a cursor bound
# again after a release times the new one), then the connection given back when idle.
class TimedReleasingCursorWrapper(ReleasingCursorMixin, TimedCursorWrapper):
    pass


class TimedReleasingCursorDebugWrapper(ReleasingCursorMixin, TimedCursorDebugWrapper):
    pass


__all__ = [
    "PIN_REASONS",
    "ReleasingCursorDebugWrapper",
    "ReleasingCursorWrapper",
    "TimedReleasingCursorDebugWrapper",
    "TimedReleasingCursorWrapper",
    "hold_connection",
    "holding",
    "needs_session",
    "release_idle_connections",
    "session_state",
]
