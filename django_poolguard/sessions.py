"""The database's side: the sessions of an alias's database in ``pg_stat_activity``, and
cancelling or terminating one of them.

Everything runs on poolguard's side connection (:func:`side_cursor`), so it works while
the pool is exhausted, which is exactly when someone needs it. Signalling is refused for
poolguard's own session, sessions of other databases and superusers' sessions (unless
``include_superusers``), and the check and the signal are one SQL statement, so a backend
pid reused in between is never hit by mistake.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .side_connection import side_cursor

CANCEL, TERMINATE = "cancel", "terminate"
ACTIONS = {CANCEL: "pg_cancel_backend", TERMINATE: "pg_terminate_backend"}
QUERY_TEXT_LIMIT = 2000  # characters of each session's SQL kept for display

# How long a session has been in its current state, the figure "longest first" sorts by:
# the transaction for sessions inside one, the query for active ones, the idle time otherwise.
_AGE = """extract(epoch from now() - coalesce(
    CASE WHEN a.state IN ('idle in transaction', 'idle in transaction (aborted)') THEN a.xact_start
         WHEN a.state = 'active' THEN a.query_start END,
    a.state_change, a.backend_start))"""

_COLUMNS = f"""a.pid, a.usename, a.application_name, host(a.client_addr), a.state, a.backend_start,
    a.xact_start, a.query_start, a.wait_event_type, a.wait_event, left(a.query, {QUERY_TEXT_LIMIT}),
    coalesce(r.rolsuper, false), a.pid = pg_backend_pid(), {_AGE}"""

_FIELDS = (
    "pid",
    "user",
    "application_name",
    "client_addr",
    "state",
    "backend_start",
    "xact_start",
    "query_start",
    "wait_event_type",
    "wait_event",
    "query",
    "superuser",
    "own",
    "age_s",
)

_THIS_DATABASE = """FROM pg_stat_activity a LEFT JOIN pg_roles r ON r.oid = a.usesysid
    WHERE a.datname = current_database() AND a.backend_type = 'client backend'"""


class SessionRefused(Exception):
    """The session may not be signalled (or is gone); the message says why, for the user."""


def _row(values: tuple[Any, ...]) -> dict[str, Any]:
    session = dict(zip(_FIELDS, values, strict=True))
    session["age_s"] = round(float(session["age_s"] or 0.0), 1)
    session["busy"] = session["state"] not in (None, "idle")
    return session


def list_sessions(alias: str = "default", limit: int = 200) -> list[dict[str, Any]]:
    """The client sessions of ``alias``'s database, busy ones first, longest first.

    Each session is a dict: pid, user, application_name, client_addr, state, backend_start,
    xact_start, query_start, wait_event_type, wait_event, query (truncated), superuser, own
    (poolguard's own session), age_s (seconds in the current state) and busy.
    Raises ``psycopg.Error`` when the database cannot be reached.
    """
    sql = f"SELECT {_COLUMNS} {_THIS_DATABASE} ORDER BY a.state IS DISTINCT FROM 'idle' DESC, {_AGE} DESC NULLS LAST LIMIT %s"
    with side_cursor(alias) as cursor:
        cursor.execute(sql, [limit])
        return [_row(values) for values in cursor.fetchall()]


def get_session(alias: str, pid: int) -> dict[str, Any] | None:
    """One session of ``alias``'s database by backend pid, or None."""
    with side_cursor(alias) as cursor:
        cursor.execute(f"SELECT {_COLUMNS} {_THIS_DATABASE} AND a.pid = %s", [pid])
        values = cursor.fetchone()
    return _row(values) if values else None


def signal_session(
    alias: str,
    pid: int,
    action: str,
    *,
    backend_start: datetime | None = None,
    include_superusers: bool = False,
) -> dict[str, Any]:
    """Cancel the query of, or terminate, session ``pid`` of ``alias``'s database.

    ``backend_start`` (as listed) pins the session: a pid reused by a newer backend is
    refused. Returns the session as it was just before the signal. Raises
    :class:`SessionRefused` when the session is gone, belongs to another database, is
    poolguard's own, is a superuser's, or PostgreSQL refuses the signal; ``psycopg.Error``
    when the database cannot be reached.
    """
    if action not in ACTIONS:
        raise SessionRefused(f"Unknown action {action!r}: use {' or '.join(ACTIONS)}.")
    session = get_session(alias, pid)
    if session is None:
        raise SessionRefused(f"Session {pid} is not a client session of this database (it may have ended).")
    if session["own"]:
        raise SessionRefused(f"Session {pid} is poolguard's own connection; it is never signalled.")
    if session["superuser"] and not include_superusers:
        raise SessionRefused(
            f"Session {pid} belongs to superuser {session['user']!r}; it is not signalled from here."
        )
    if backend_start is not None and session["backend_start"] != backend_start:
        raise SessionRefused(f"Session {pid} is a newer session than the one listed; nothing was done.")

    # The conditions again, in the same statement as the signal: nothing can change in between.
    conditions = "AND a.pid = %s AND a.pid <> pg_backend_pid() AND a.backend_start = %s"
    if not include_superusers:
        conditions += " AND NOT coalesce(r.rolsuper, false)"
    import psycopg

    try:
        with side_cursor(alias) as cursor:
            cursor.execute(
                f"SELECT {ACTIONS[action]}(a.pid) {_THIS_DATABASE} {conditions}",
                [pid, session["backend_start"]],
            )
            result = cursor.fetchone()
    except psycopg.errors.InsufficientPrivilege as exc:
        raise SessionRefused(
            f"PostgreSQL refused to {action} session {pid}: {exc.diag.message_primary}. "
            "The database user needs the pg_signal_backend role."
        ) from exc
    if result is None:
        raise SessionRefused(f"Session {pid} ended before it could be signalled; nothing was done.")
    if not result[0]:
        raise SessionRefused(f"PostgreSQL did not {action} session {pid} (it may have just ended).")
    return session
