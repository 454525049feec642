"""The database's side: sessions of one database from ``pg_stat_activity``, and cancelling
or terminating them safely.

Everything here runs over poolguard's side connection, never a slot of the pool: these
are the reads an operator needs precisely when the pool is exhausted.
"""

from __future__ import annotations

from typing import Any

from django_poolguard.engine.side_connection import side_cursor
from django_poolguard.fleet.redaction import redact_sql

QUERY_CHARS = 500  # SQL text shown per session, cut after redaction; enough to recognise a query
ACTIONS = {"cancel": "pg_cancel_backend", "terminate": "pg_terminate_backend"}

SESSIONS_SQL = """
SELECT a.pid, a.usename, a.application_name, a.client_addr::text, a.state,
       extract(epoch FROM now() - a.backend_start)::float AS connected_s,
       extract(epoch FROM now() - a.xact_start)::float AS transaction_s,
       extract(epoch FROM now() - a.query_start)::float AS query_s,
       extract(epoch FROM now() - a.state_change)::float AS state_s,
       a.wait_event_type, a.wait_event, a.query,
       a.pid = pg_backend_pid() AS own,
       COALESCE(r.rolsuper, false) AS superuser
FROM pg_stat_activity a
LEFT JOIN pg_roles r ON r.oid = a.usesysid
WHERE a.datname = current_database()
  -- Other roles' sessions hide their backend_type from unprivileged roles: keep them.
  AND COALESCE(a.backend_type, 'client backend') = 'client backend'
ORDER BY a.xact_start NULLS LAST, a.backend_start
"""

#: The server's connection limits, the first two figures of every connection budget.
SERVER_LIMITS_SQL = (
    "SELECT current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int"
)

COLUMNS = (
    "pid",
    "user",
    "application_name",
    "client_addr",
    "state",
    "connected_s",
    "transaction_s",
    "query_s",
    "state_s",
    "wait_event_type",
    "wait_event",
    "query",
    "own",
    "superuser",
)


def workload_of(application_name: str | None) -> str | None:
    """``web`` from ``web:default:host:123``; ``None`` for sessions poolguard did not name."""
    parts = (application_name or "").split(":")
    return parts[0] if len(parts) >= 4 and parts[-1].isdigit() else None


def sessions(alias: str = "default") -> list[dict[str, Any]]:
    """Client sessions of ``alias``'s database, oldest transaction first (raises ``psycopg.Error``)."""
    with side_cursor(alias) as cursor:
        cursor.execute(SESSIONS_SQL)
        rows = cursor.fetchall()
    out = []
    for row in rows:
        session = dict(zip(COLUMNS, row, strict=True))
        for key in ("connected_s", "transaction_s", "query_s", "state_s"):
            if session[key] is not None:
                session[key] = round(max(0.0, session[key]), 3)
        session["workload"] = workload_of(session["application_name"])
        # Here, so no view of sessions shows a secret; the whole text first (as long as the server's
        # track_activity_query_size keeps), so the cut cannot leave a secret's beginning behind.
        session["query"] = redact_sql(session["query"], QUERY_CHARS)
        out.append(session)
    return out


def session_age(session: dict[str, Any]) -> float:
    """How long a session has been doing what it does: the transaction, else the running
    query, else the idle time; the figure "older than" filters on and "longest first" sorts by."""
    keys: tuple[str, ...] = ("transaction_s", "query_s", "state_s", "connected_s")
    if session["state"] == "idle":
        keys = ("state_s", "connected_s")
    for key in keys:
        if session.get(key) is not None:
            return float(session[key])
    return 0.0


def longest_first(session: dict[str, Any]) -> tuple[bool, float]:
    """Sort key: busy sessions first (they hold something), each group by :func:`session_age`."""
    return (session["state"] in (None, "idle"), -session_age(session))


def server_settings(alias: str = "default") -> dict[str, int]:
    """``max_connections``, ``superuser_reserved_connections`` and the server-wide session count."""
    with side_cursor(alias) as cursor:
        cursor.execute(
            SERVER_LIMITS_SQL + ", (SELECT count(*) FROM pg_stat_activity "
            "WHERE COALESCE(backend_type, 'client backend') = 'client backend')::int"
        )
        max_connections, superuser_reserved, connections = cursor.fetchone()  # type: ignore[misc]
    return {
        "max_connections": max_connections,
        "superuser_reserved_connections": superuser_reserved,
        "server_connections": connections,
    }


def matches(
    session: dict[str, Any],
    *,
    older_than: float | None = None,
    state: str | None = None,
    workload: str | None = None,
) -> bool:
    """The ``poolactivity`` filters; ``older_than`` compares :func:`session_age`."""
    if state is not None and (session["state"] or "") != state:
        return False
    if workload is not None and session["workload"] != workload:
        return False
    if older_than is not None and session_age(session) < older_than:
        return False
    return True


class RefusedSession(Exception):
    """The session may not be signalled (own session, another database, a superuser's)."""


def signal_session(alias: str, pid: int, action: str, *, include_superusers: bool = False) -> bool:
    """Cancel the query of, or terminate, backend ``pid`` of ``alias``'s database.

    The safety rules are checked in the same statement that sends the signal, so a pid
    reused between listing and acting cannot redirect it. Raises :class:`RefusedSession`
    naming the rule; returns PostgreSQL's answer (``False``: the session was already gone
    or the role lacks the privilege).
    """
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {', '.join(ACTIONS)}, not {action!r}")
    with side_cursor(alias) as cursor:
        cursor.execute(
            "SELECT a.datname = current_database(), a.pid = pg_backend_pid(), COALESCE(r.rolsuper, false) "
            "FROM pg_stat_activity a LEFT JOIN pg_roles r ON r.oid = a.usesysid WHERE a.pid = %s",
            [pid],
        )
        row = cursor.fetchone()
        if row is None:
            return False
        same_database, own, superuser = row
        if not same_database:
            raise RefusedSession(
                f"session {pid} belongs to another database; poolguard only touches its own."
            )
        if own:
            raise RefusedSession(f"session {pid} is poolguard's own connection.")
        if superuser and not include_superusers:
            raise RefusedSession(
                f"session {pid} belongs to a superuser; pass --include-superusers to touch it anyway."
            )
        cursor.execute(
            f"SELECT {ACTIONS[action]}(a.pid) FROM pg_stat_activity a "
            "LEFT JOIN pg_roles r ON r.oid = a.usesysid "
            "WHERE a.pid = %s AND a.datname = current_database() AND a.pid <> pg_backend_pid() "
            "AND (%s OR NOT COALESCE(r.rolsuper, false))",
            [pid, include_superusers],
        )
        answer = cursor.fetchone()
    return bool(answer and answer[0])
