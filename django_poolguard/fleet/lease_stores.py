"""Where the leases of a fleet budget live: a table in the alias's own database, or a Django cache.

A lease is how many connections one process (an *owner*) may hold of its workload's budget
(``OPTIONS["poolguard"]["fleet_budget"]``). The store, not any process's view of the fleet,
decides: :meth:`LeaseStore.exchange` is atomic in the store, so during a burst of processes that
have not seen each other yet the leases still sum to at most the budget. Leases expire by the
store's clock (PostgreSQL's ``clock_timestamp()``, the cache's own expiry): a process that dies
frees its lease without anyone cleaning up.

Both stores raise :class:`StoreUnavailable` (a message with no DSN or password in it) when they
cannot answer; the lease keeper (:mod:`django_poolguard.fleet.leases`) then falls back to a
static share.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
from psycopg import errors as pg_errors

from django_poolguard.engine.pool import connect_error_text
from django_poolguard.engine.side_connection import side_cursor

TABLE = "poolguard_lease"
LOCK_TTL = 5  # s a cache store's lock outlives a holder that died holding it
LOCK_WAIT = 2.0  # s an exchange spins for the cache store's lock before giving up
INDEX_TIMEOUT = 24 * 3600  # s: the cache's owners index is rewritten by every exchange


@dataclass(frozen=True)
class Grant:
    """The store's answer to one exchange."""

    lease: int  # connections this owner may now hold
    members: int  # live owners of the key, this one included
    fleet_held: int  # sum of live leases of the key, this one's included
    #: connections the other owners asked for, up to the fair share, and do not hold: what a
    #: borrower above its share gives back (0: nobody needs it, borrowed connections may stay)
    wanting: int = 0


class StoreUnavailable(Exception):
    """The lease store could not answer; the message names the store and the reason, never a secret."""


class StoreBusy(StoreUnavailable):
    """The store answers, but other owners held its lock too long this time: try at the next heartbeat
    (not an outage: the pool keeps its lease, it does not fall back)."""


class LeaseStore(Protocol):
    kind: str  # "database" | "cache"

    def exchange(self, key: str, owner: str, want: int, hold: int, budget: int, ttl: float) -> Grant: ...

    def release(self, key: str, owner: str) -> None: ...


def wanting(budget: int, members: int, others: list[tuple[int, int]]) -> int:
    """What the other owners (``(lease, want)``) lack of what they asked for, up to the fair share."""
    share = budget // max(1, members)
    return sum(max(0, min(want, share) - lease) for lease, want in others)


def grant(want: int, hold: int, budget: int, others: int, previous: int) -> int:
    """The lease an owner gets: what it wants of what the others leave, and never less than what it
    still holds under its live lease (that was granted within the budget, so the sum stays within)."""
    return max(0, min(want, budget - others), min(hold, previous))


class DatabaseLeaseStore:
    """Leases as rows of ``poolguard_lease`` in the alias's own database, over the side connection.

    One transaction per exchange under ``pg_advisory_xact_lock`` of the budget key: concurrent
    exchanges of one key run one after the other; expiry is the server's ``clock_timestamp()``.
    """

    kind = "database"

    def __init__(self, alias: str) -> None:
        self.alias = alias

    def exchange(self, key: str, owner: str, want: int, hold: int, budget: int, ttl: float) -> Grant:
        try:
            with side_cursor(self.alias) as cursor:
                with cursor.connection.transaction():
                    cursor.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [key])
                    cursor.execute(
                        f"DELETE FROM {TABLE} WHERE key = %s AND expires_at < clock_timestamp()", [key]
                    )
                    cursor.execute(f"SELECT owner, lease, want FROM {TABLE} WHERE key = %s", [key])
                    rows = cursor.fetchall()
                    previous = sum(lease for row_owner, lease, _ in rows if row_owner == owner)
                    rest = [(lease, wanted) for row_owner, lease, wanted in rows if row_owner != owner]
                    others = sum(lease for lease, _ in rest)
                    lease = grant(want, hold, budget, others, previous)
                    cursor.execute(
                        f"INSERT INTO {TABLE} (key, owner, lease, want, expires_at) "
                        "VALUES (%s, %s, %s, %s, clock_timestamp() + make_interval(secs => %s)) "
                        "ON CONFLICT (key, owner) DO UPDATE SET lease = EXCLUDED.lease, "
                        "want = EXCLUDED.want, expires_at = EXCLUDED.expires_at",
                        [key, owner, lease, want, float(ttl)],
                    )
                    members = len(rest) + 1
        except pg_errors.UndefinedTable as exc:
            raise StoreUnavailable(
                f"the table {TABLE} does not exist in the database of alias {self.alias!r}: "
                f"run `manage.py migrate django_poolguard --database {self.alias}`"
            ) from exc
        except psycopg.Error as exc:
            raise StoreUnavailable(
                f"database store of alias {self.alias!r}: {connect_error_text(exc)}"
            ) from exc
        return Grant(
            lease=lease, members=members, fleet_held=others + lease, wanting=wanting(budget, members, rest)
        )

    def release(self, key: str, owner: str) -> None:
        try:
            with side_cursor(self.alias) as cursor:
                cursor.execute(f"DELETE FROM {TABLE} WHERE key = %s AND owner = %s", [key, owner])
        except pg_errors.UndefinedTable:
            return
        except psycopg.Error as exc:
            raise StoreUnavailable(
                f"database store of alias {self.alias!r}: {connect_error_text(exc)}"
            ) from exc


def _cache_key(*parts: str) -> str:
    """Keys safe for any cache (memcached allows no spaces and 250 characters): hashed."""
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:40]
    return f"poolguard:lease:{digest}"


class CacheLeaseStore:
    """Leases in a shared Django cache (Redis, Memcached), through the cache API only.

    Per key: a lock taken with ``cache.add`` (atomic in every shared backend), an index of owners,
    and one entry per owner whose timeout is the lease's ttl, so the cache's own clock expires it.
    """

    kind = "cache"

    def __init__(self, cache_alias: str) -> None:
        self.cache_alias = cache_alias

    @property
    def cache(self) -> Any:
        from django.core.cache import caches

        return caches[self.cache_alias]

    def exchange(self, key: str, owner: str, want: int, hold: int, budget: int, ttl: float) -> Grant:
        try:
            cache = self.cache
            with _CacheLock(cache, _cache_key(key, "lock"), owner):
                index_key = _cache_key(key, "owners")
                owners = [o for o in (cache.get(index_key) or []) if isinstance(o, str)]
                entry_keys = {o: _cache_key(key, "owner", o) for o in {*owners, owner}}
                found = cache.get_many(list(entry_keys.values()))
                entries = {o: _entry(found[k]) for o, k in entry_keys.items() if k in found}
                previous = entries.pop(owner, (0, 0))[0]
                others = sum(lease for lease, _ in entries.values())
                lease = grant(want, hold, budget, others, previous)
                # Django's Redis backend truncates timeouts to whole seconds: round up, never to 0.
                cache.set(entry_keys[owner], [lease, want], timeout=max(1, math.ceil(ttl)))
                cache.set(index_key, sorted({*entries, owner}), timeout=INDEX_TIMEOUT)
                members = len(entries) + 1
        except StoreUnavailable:
            raise
        except Exception as exc:  # each cache backend raises its own client's errors
            raise StoreUnavailable(f"cache store {self.cache_alias!r}: {_error_text(exc)}") from exc
        return Grant(
            lease=lease,
            members=members,
            fleet_held=others + lease,
            wanting=wanting(budget, members, list(entries.values())),
        )

    def release(self, key: str, owner: str) -> None:
        try:
            cache = self.cache
            with _CacheLock(cache, _cache_key(key, "lock"), owner):
                index_key = _cache_key(key, "owners")
                cache.delete(_cache_key(key, "owner", owner))
                owners = [o for o in (cache.get(index_key) or []) if o != owner]
                cache.set(index_key, owners, timeout=INDEX_TIMEOUT)
        except StoreUnavailable:
            raise
        except Exception as exc:
            raise StoreUnavailable(f"cache store {self.cache_alias!r}: {_error_text(exc)}") from exc


class _CacheLock:
    """A short lock in the cache: ``add`` succeeds for one owner; it expires if that owner dies."""

    def __init__(self, cache: Any, key: str, owner: str) -> None:
        self.cache, self.key, self.owner = cache, key, owner

    def __enter__(self) -> None:
        deadline = time.monotonic() + LOCK_WAIT
        delay = 0.005
        while not self.cache.add(self.key, self.owner, timeout=LOCK_TTL):
            if time.monotonic() > deadline:
                raise StoreBusy(f"cache store: its lease lock stayed taken for {LOCK_WAIT:g} s")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def __exit__(self, *exc: object) -> None:
        # Only our own lock: one that expired under a slow holder may be someone else's now.
        if self.cache.get(self.key) == self.owner:
            self.cache.delete(self.key)


def _entry(value: Any) -> tuple[int, int]:
    """An owner's cache entry, ``[lease, want]``."""
    lease, want = value
    return int(lease), int(want)


def _error_text(exc: BaseException) -> str:
    return connect_error_text(exc)


def store_for(alias: str, kind: str, cache_alias: str) -> LeaseStore:
    """The store an alias's settings name."""
    return CacheLeaseStore(cache_alias) if kind == "cache" else DatabaseLeaseStore(alias)


__all__ = [
    "CacheLeaseStore",
    "DatabaseLeaseStore",
    "Grant",
    "LeaseStore",
    "StoreBusy",
    "StoreUnavailable",
    "grant",
    "store_for",
    "wanting",
]
