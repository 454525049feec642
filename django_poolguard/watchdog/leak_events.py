"""``LeakEvent`` rows: the leak history, written by the watchdog outside the pool.

The scan calls :func:`record` for each report; :func:`flush` (a watchdog task that runs
right after the scan) upserts them by ``(alias, kind, fingerprint)`` with one
``INSERT ... ON CONFLICT`` per place in the code, so a leaking endpoint hit 10,000 times is
one row with ``count=10000``. Writes go through :func:`~django_poolguard.engine.side_connection.side_cursor`,
never through a pool: they work exactly when the pool is exhausted, and they never use a
request's connection or transaction.

``resolved`` is a triage flag for people (the admin's "mark resolved"): a late return does
not set it, because the code still held a connection past the threshold; a new occurrence
of a resolved place sets it back to false (a regression).

A failed write is logged and retried after :data:`RETRY_AFTER_FAILURE` seconds, never
raised: the log already carries every report.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from time import monotonic
from typing import Any

from django_poolguard.engine.side_connection import side_cursor
from django_poolguard.watchdog.reports import LeakReport

logger = logging.getLogger("django_poolguard")

TASK_NAME = "leak-events"
MAX_PENDING = 1000  # distinct places kept while the database is unreachable; more are counted and dropped
RETRY_AFTER_FAILURE = 30.0  # s: a down database costs the watchdog one connect timeout per this
INT_MAX = 2**31 - 1  # LeakEvent.count is a PostgreSQL integer

_UPSERT = """
INSERT INTO {table} AS event (alias, workload, kind, context, host, pid, thread, stack, fingerprint,
                              held_seconds, first_seen, last_seen, count, resolved)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, false)
ON CONFLICT (alias, kind, fingerprint) DO UPDATE SET
    workload = EXCLUDED.workload,
    context = EXCLUDED.context,
    host = EXCLUDED.host,
    pid = EXCLUDED.pid,
    thread = EXCLUDED.thread,
    stack = EXCLUDED.stack,
    held_seconds = GREATEST(event.held_seconds, EXCLUDED.held_seconds),
    last_seen = GREATEST(event.last_seen, EXCLUDED.last_seen),
    count = LEAST(event.count::bigint + EXCLUDED.count, {int_max}),
    resolved = false
"""


@dataclass
class _Pending:
    """Occurrences of one place not yet written: the latest report plus how many since the last write."""

    report: LeakReport
    count: int
    first_seen: datetime
    last_seen: datetime
    held: float


# (database alias, poolguard alias, kind, fingerprint) -> occurrences waiting to be written.
_pending: dict[tuple[str, str, str, str], _Pending] = {}
# Guards _pending and _dropped: record() runs in the scan, flush() in the watchdog or a test.
_lock = threading.Lock()
# Serializes flushes so two callers never write the same batch twice.
_flush_lock = threading.Lock()
_retry_at: dict[str, float] = {}  # database alias -> monotonic time before which we do not retry
_dropped = 0
_warned_vendor: set[str] = set()


def target_database() -> str:
    """The database alias LeakEvent rows are written to, as the project's routers decide."""
    from django.db import router

    from django_poolguard.models import LeakEvent  # not at import: models need the app (W011)

    return router.db_for_write(LeakEvent) or "default"


def record(report: LeakReport) -> None:
    """Queue one occurrence; :func:`flush` writes it. Never blocks on the database."""
    global _dropped
    now = datetime.now(UTC)
    try:
        database = target_database()
    except Exception:
        logger.exception("poolguard could not route LeakEvent; the report stays in the log only")
        return
    key = (database, report.alias, report.kind, report.fingerprint)
    with _lock:
        pending = _pending.get(key)
        if pending is not None:
            pending.report = report
            pending.count += 1
            pending.last_seen = now
            pending.held = max(pending.held, report.held)
        elif len(_pending) < MAX_PENDING:
            _pending[key] = _Pending(report, 1, now, now, report.held)
        else:
            _dropped += 1


def flush() -> int:
    """Write the queued occurrences; returns how many rows were upserted. Logs failures, never raises."""
    global _dropped
    with _flush_lock:
        with _lock:
            if not _pending:
                return 0
            now = monotonic()
            batches: dict[str, list[tuple[tuple[str, str, str, str], _Pending]]] = {}
            for key in list(_pending):
                if _retry_at.get(key[0], 0.0) <= now:
                    batches.setdefault(key[0], []).append((key, _pending.pop(key)))
            dropped, _dropped = _dropped, 0
        if dropped:
            logger.warning(
                "poolguard dropped %d leak event(s): more than %d distinct places were waiting to be written.",
                dropped,
                MAX_PENDING,
            )
        written = 0
        for database, batch in batches.items():
            written += _write(database, batch)
        return written


def _write(database: str, batch: list[tuple[tuple[str, str, str, str], _Pending]]) -> int:
    from django.db import connections

    try:
        vendor = connections[database].vendor
    except Exception:  # the alias left DATABASES (tests do this): nowhere to write
        logger.warning(
            "poolguard dropped %d leak event(s) for database %r, which no longer exists.",
            len(batch),
            database,
        )
        return 0
    if vendor != "postgresql":
        if database not in _warned_vendor:
            _warned_vendor.add(database)
            logger.warning(
                "LeakEvent rows are routed to database %r, which is not PostgreSQL; poolguard keeps "
                "leak reports in the log only. Route django_poolguard's models to a PostgreSQL alias.",
                database,
            )
        return 0
    try:
        with side_cursor(database) as cursor:
            cursor.executemany(_statement(), [_row(pending) for _, pending in batch])
    except Exception as exc:
        _retry_at[database] = monotonic() + RETRY_AFTER_FAILURE
        with _lock:
            for key, pending in batch:
                _merge_back(key, pending)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        logger.warning(
            "poolguard could not write %d leak event(s) to database %r (%s: %s); it retries in %.0f s. "
            "The leaks themselves are in the log above.",
            len(batch),
            database,
            type(exc).__name__,
            reason,
            RETRY_AFTER_FAILURE,
        )
        return 0
    _retry_at.pop(database, None)
    return len(batch)


def _merge_back(key: tuple[str, str, str, str], pending: _Pending) -> None:
    newer = _pending.get(key)
    if newer is None:
        if len(_pending) < MAX_PENDING:
            _pending[key] = pending
        return
    newer.count += pending.count
    newer.first_seen = min(newer.first_seen, pending.first_seen)
    newer.held = max(newer.held, pending.held)


def _statement() -> Any:
    from psycopg import sql

    from django_poolguard.models import LeakEvent  # not at import: models need the app (W011)

    return sql.SQL(_UPSERT).format(
        table=sql.Identifier(LeakEvent._meta.db_table), int_max=sql.Literal(INT_MAX)
    )


def _row(pending: _Pending) -> tuple[Any, ...]:
    report = pending.report
    return (
        report.alias[:100],
        report.workload[:100],
        report.kind,
        report.context[:500],
        report.host[:255],
        report.pid,
        report.thread[:200],
        "\n".join(report.stack),
        report.fingerprint,
        pending.held,
        pending.first_seen,
        pending.last_seen,
        min(pending.count, INT_MAX),
    )


def flush_at_exit() -> None:
    """At shutdown (the runtime calls this): a short command may end between a report and the next pass."""
    if _pending:
        try:
            flush()
        except Exception:  # never let poolguard spoil interpreter exit
            pass


def reset_after_fork() -> None:
    """In a forked child (the runtime calls this): the parent writes its own events."""
    global _lock, _flush_lock, _dropped
    _lock = threading.Lock()
    _flush_lock = threading.Lock()
    _pending.clear()
    _retry_at.clear()
    _dropped = 0


__all__ = ["TASK_NAME", "flush", "flush_at_exit", "record", "reset_after_fork", "target_database"]
