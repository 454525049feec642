"""Publishing: every process with a pool puts its snapshot where fleet views can read it.

A pool lives inside one process, but ``poolstats`` and the admin run in others. So the
watchdog publishes :func:`~django_poolguard.fleet.snapshots.process_snapshot` every
``PUBLISH_INTERVAL`` seconds:

- ``PUBLISH="database"``: one row per process in ``django_poolguard_processsnapshot``,
  written through poolguard's side connection (never a slot of the pool, so it works
  while the pool is exhausted). Rows silent for 3 of their intervals are deleted.
- ``PUBLISH="cache"``: one key per process in the ``PUBLISH_CACHE`` Django cache, expiring
  after 3 intervals, plus an index key listing the live processes.
- ``PUBLISH=None``: nothing leaves the process (fleet views then show only their own).

Each snapshot carries a short history per alias (the last 15 minutes) for sparklines. The
shapes, their schema version and the history's encoding are
:mod:`~django_poolguard.fleet.schema`'s.
A process that has no pool yet publishes nothing: it has nothing to show, and the
watchdog only starts with the first pool. A process that exits cleanly withdraws itself.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import deque
from time import monotonic, time
from typing import Any, NamedTuple

from django_poolguard.conf import guard_settings, hostname
from django_poolguard.engine.pool import all_pools
from django_poolguard.engine.side_connection import side_cursor
from django_poolguard.fleet.schema import (
    MAX_ENTRY_CHARS,
    MAX_PUBLISH_INTERVAL,
    AliasSnapshot,
    EncodedPoint,
    HistoryPoint,
    ProcessSnapshot,
    RawEntry,
    Unreadable,
    encode_point,
    published_timing,
    read_entries,
)
from django_poolguard.fleet.snapshots import process_snapshot

logger = logging.getLogger("django_poolguard")

SILENT_INTERVALS = 3  # a process silent for this many of its intervals has left the fleet
HISTORY_SECONDS = 15 * 60
HISTORY_POINTS = 180  # one point per HISTORY_SECONDS / HISTORY_POINTS = 5 s at most
HISTORY_STEP = HISTORY_SECONDS / HISTORY_POINTS
CACHE_PREFIX = "poolguard:process:"
CACHE_INDEX = "poolguard:processes"
INDEX_TIMEOUT = 24 * 3600  # s: refreshed by every joining process; only bounds garbage
ERROR_REPEAT = 300.0  # s between two log lines about the same publishing failure


def process_key(host: str | None = None, pid: int | None = None) -> str:
    return f"{host or hostname()}:{pid or os.getpid()}"


def publish_interval() -> float:
    return float(guard_settings.PUBLISH_INTERVAL)


# --- History ---------------------------------------------------------------------------------


class History:
    """Recent :class:`~django_poolguard.fleet.schema.HistoryPoint` s per alias, at most one per step.

    Between two steps the newest point is overwritten, so the last point is always current.
    """

    def __init__(self) -> None:
        # Guards _points: the watchdog records while a view or command may read.
        self._lock = threading.Lock()
        self._points: dict[str, deque[HistoryPoint]] = {}

    def record(self, alias: str, data: AliasSnapshot, now: float | None = None) -> None:
        now = time() if now is None else now
        point = HistoryPoint(
            t=round(now, 1),
            in_use=data["in_use"],
            idle=data["idle"],
            waiting=data["waiting"],
            max=data["max"],
            acquire_p95_ms=data["acquire_ms"]["p95"],
        )
        with self._lock:
            points = self._points.setdefault(alias, deque(maxlen=HISTORY_POINTS + 1))
            if len(points) >= 2 and now - points[-2].t < HISTORY_STEP:
                points[-1] = point
            else:
                points.append(point)
            while points and points[0].t < now - HISTORY_SECONDS:
                points.popleft()

    def points(self, alias: str) -> list[EncodedPoint]:
        """The alias's points as published."""
        with self._lock:
            return [encode_point(p) for p in self._points.get(alias, ())]

    def clear(self) -> None:
        with self._lock:
            self._points.clear()


history = History()


def current_snapshot() -> ProcessSnapshot | None:
    """This process's ``processes[]`` entry with history, or ``None`` when it has no pool."""
    if not all_pools():
        return None
    data = process_snapshot()
    data["publish_interval"] = publish_interval()
    for alias, alias_data in data["aliases"].items():
        history.record(alias, alias_data)
        alias_data["history"] = history.points(alias)
    return data


# --- Stores ----------------------------------------------------------------------------------


def snapshot_alias() -> str:
    """The database alias holding the ``ProcessSnapshot`` table (the router decides)."""
    from django.db import router

    from django_poolguard.models import ProcessSnapshot  # not at import: models need the app (W011)

    return router.db_for_write(ProcessSnapshot) or "default"


def _table() -> str:
    from django_poolguard.models import ProcessSnapshot  # not at import: models need the app (W011)

    return ProcessSnapshot._meta.db_table


# A row's own interval, read so that no row can fail the statement for every other one: a
# non-number (hand-edited, another release) falls back to the reader's interval, and an
# absurd one is clamped before the cast to float (jsonb holds 10**400; float does not).
# CASE evaluates the cast only for numbers. Parameters: the clamp's bound, the fallback.
_ROW_INTERVAL = (
    "COALESCE(CASE WHEN jsonb_typeof(data->'publish_interval') = 'number' "
    "THEN LEAST(GREATEST((data->'publish_interval')::numeric, 0.001), %s::numeric)::float END, %s)"
)


class DatabaseStore:
    """Rows of ``django_poolguard_processsnapshot`` over the side connection, dated by the
    database's clock so hosts with skewed clocks agree on who is silent."""

    def publish(self, data: ProcessSnapshot) -> None:
        table = _table()
        with side_cursor(snapshot_alias()) as cursor:
            cursor.execute(
                f"INSERT INTO {table} (key, host, pid, role, updated_at, data) "
                "VALUES (%s, %s, %s, %s, now(), %s::jsonb) "
                "ON CONFLICT (key) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid, "
                "role = EXCLUDED.role, updated_at = EXCLUDED.updated_at, data = EXCLUDED.data",
                [
                    process_key(data["host"], data["pid"]),
                    data["host"],
                    data["pid"],
                    data["role"],
                    _dumps(data),
                ],
            )
            # Each row expires after 3 of its own intervals, so fast and slow publishers coexist.
            cursor.execute(
                f"DELETE FROM {table} WHERE updated_at < now() - make_interval(secs => %s * {_ROW_INTERVAL})",
                [SILENT_INTERVALS, MAX_PUBLISH_INTERVAL, publish_interval()],
            )

    def withdraw(self, key: str) -> None:
        with side_cursor(snapshot_alias()) as cursor:
            cursor.execute(f"DELETE FROM {_table()} WHERE key = %s", [key])

    def read(self) -> list[RawEntry]:
        with side_cursor(snapshot_alias()) as cursor:
            # As text, parsed row by row: one unparsable row (say, an integer of 5000 digits,
            # which Python's json refuses) must not fail the fetch of all the others.
            cursor.execute(
                f"SELECT data::text, host, pid, extract(epoch FROM now() - updated_at)::float "
                f"FROM {_table()} WHERE updated_at >= now() - make_interval(secs => %s * {_ROW_INTERVAL}) "
                "ORDER BY host, pid",
                [SILENT_INTERVALS, MAX_PUBLISH_INTERVAL, publish_interval()],
            )
            rows = cursor.fetchall()
        out = []
        for text, host, pid, age in rows:
            age_s = round(max(0.0, age), 3)
            if len(text) > MAX_ENTRY_CHARS:
                error = f"{len(text)} characters of JSON, more than the {MAX_ENTRY_CHARS} read"
                out.append(RawEntry(None, age_s, host, pid, error=error))
                continue
            try:
                out.append(RawEntry(json.loads(text), age_s, host, pid))
            except (ValueError, RecursionError) as exc:
                error = f"not readable as JSON ({type(exc).__name__}: {str(exc)[:120]})"
                out.append(RawEntry(None, age_s, host, pid, error=error))
        return out


class CacheStore:
    """One key per process (expiring after 3 intervals) plus an index of keys.

    The index is read-modify-write through the plain cache API (so any backend works,
    Django's ``RedisCache`` included). A process writes it only when it is missing from it,
    and checks every interval, so an update lost to a concurrent writer heals within one
    interval; readers ignore index entries whose key has expired, and prune them.
    """

    @property
    def cache(self) -> Any:
        from django.core.cache import caches

        return caches[guard_settings.PUBLISH_CACHE]

    def publish(self, data: ProcessSnapshot) -> None:
        cache = self.cache
        key = process_key(data["host"], data["pid"])
        entry: ProcessSnapshot = {**data, "published_at": time()}
        cache.set(CACHE_PREFIX + key, entry, timeout=SILENT_INTERVALS * publish_interval())
        index = _index(cache)
        if key not in index:
            cache.set(CACHE_INDEX, sorted({*index, key}), timeout=INDEX_TIMEOUT)

    def withdraw(self, key: str) -> None:
        cache = self.cache
        cache.delete(CACHE_PREFIX + key)
        index = _index(cache)
        if key in index:
            cache.set(CACHE_INDEX, [k for k in index if k != key], timeout=INDEX_TIMEOUT)

    def read(self) -> list[RawEntry]:
        cache = self.cache
        index = _index(cache)
        found = cache.get_many([CACHE_PREFIX + key for key in index])
        now = time()
        out = []
        live = set()
        for key in sorted(index):
            if CACHE_PREFIX + key not in found:
                continue  # expired: the index is pruned below
            data = found[CACHE_PREFIX + key]
            # The entry is not trusted yet: bad timing values fall back to ours, so it is
            # listed (and reported by the reader) rather than failing this loop.
            interval, published_at = published_timing(data, now)
            age = 0.0 if published_at is None else max(0.0, now - published_at)
            # Caches may keep a key a little past its timeout (e.g. second granularity).
            if age > SILENT_INTERVALS * (interval or publish_interval()):
                continue
            live.add(key)
            host, _, pid = key.rpartition(":")
            # isdigit() alone lets "²" through, which int() refuses; 10 digits hold any pid.
            pid_number = int(pid) if pid.isascii() and pid.isdigit() and len(pid) <= 10 else None
            out.append(RawEntry(data, round(age, 3), host, pid_number))
        if set(index) - live:
            current = _index(cache)
            cache.set(CACHE_INDEX, [k for k in current if k in live or k not in index], timeout=INDEX_TIMEOUT)
        return out


def _index(cache: Any) -> list[str]:
    """The index's process keys; anything else found there (not a list, not strings) is
    ignored, and the next publish rewrites the index."""
    index = cache.get(CACHE_INDEX)
    if not isinstance(index, (list, tuple)):
        return []
    return [key for key in index if isinstance(key, str)]


def store(mode: str | None = None) -> DatabaseStore | CacheStore | None:
    """The store for ``mode`` (default: the ``PUBLISH`` setting); ``None`` when not publishing."""
    mode = guard_settings.PUBLISH if mode is None else mode
    if mode == "database":
        return DatabaseStore()
    if mode == "cache":
        return CacheStore()
    return None


class Published(NamedTuple):
    """What the live processes published: the readable snapshots, by (host, pid), and the
    skipped ones with why (see :mod:`~django_poolguard.fleet.schema`)."""

    processes: list[ProcessSnapshot]
    unreadable: list[Unreadable]


def read_published(mode: str | None = None, *, history: bool = True) -> Published:
    """The snapshots of every live process (raises ``psycopg.Error`` / cache errors);
    ``history=False`` leaves out (and skips checking) the history points."""
    target = store(mode)
    processes, unreadable = read_entries(target.read() if target is not None else [], history=history)
    processes.sort(key=lambda p: (p["host"], p["pid"]))
    return Published(processes, unreadable)


# --- The watchdog task -----------------------------------------------------------------------

_last_errors: dict[str, float] = {}
# Serializes snapshot-and-write, so an older snapshot (the watchdog's) can never be written
# after a newer one (an explicit publish_now()) and overwrite it.
_publish_lock = threading.Lock()
# The key this process last published under, so exit withdraws exactly that one.
_published: dict[str, str] = {}


def publish_now() -> bool:
    """Publish this process's snapshot now; ``False`` when there is nothing or nowhere to publish.

    Errors are logged (at most every 5 minutes per message) and swallowed: a fleet view
    missing one process must never break the process itself.
    """
    target = store()
    with _publish_lock:
        data = current_snapshot()
        if data is None or target is None:
            return False
        try:
            target.publish(data)
        except Exception as exc:
            _log_error(exc)
            return False
    _published["key"] = process_key(data["host"], data["pid"])
    _published["mode"] = str(guard_settings.PUBLISH)
    return True


def withdraw() -> None:
    """Remove this process from fleet views (at clean exit)."""
    key = _published.pop("key", None)
    mode = _published.pop("mode", None)
    if key is None or key != process_key():
        return
    target = store(mode)
    if target is None:
        return
    try:
        target.withdraw(key)
    except Exception:
        # At exit the database or cache may be gone; the entry then expires by itself.
        pass


def _log_error(exc: Exception) -> None:
    import psycopg

    message = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    if isinstance(exc, psycopg.errors.UndefinedTable):
        # Normal while `migrate` creates the tables (its own pool publishes too): say it once, quietly.
        if "UndefinedTable" not in _last_errors:
            _last_errors["UndefinedTable"] = monotonic()
            logger.info(
                "poolguard cannot publish this process's pool snapshot yet: the table %s does not exist. "
                "Normal while `manage.py migrate` runs; otherwise run it, or set POOLGUARD['PUBLISH'] "
                "to 'cache' or None.",
                _table(),
            )
        return
    now = monotonic()
    if now - _last_errors.get(message, -ERROR_REPEAT) < ERROR_REPEAT:
        return
    _last_errors[message] = now
    logger.warning(
        "poolguard could not publish this process's pool snapshot (PUBLISH=%r) for fleet views: %s; "
        "check the database or cache it names (PUBLISH_CACHE). The pools keep working; poolstats and "
        "the admin just miss this process until it succeeds.",
        guard_settings.PUBLISH,
        message,
    )


def reset_after_fork() -> None:
    """In a forked child (the runtime calls this): it publishes under its own pid, and must not
    withdraw the parent."""
    global _publish_lock
    _publish_lock = threading.Lock()
    _published.clear()
    history.clear()


def _dumps(data: ProcessSnapshot) -> str:
    return json.dumps(data, default=str)
