"""The fleet budget's lease keeper: each process's pool follows its share of a fleet-wide budget.

An alias with ``OPTIONS["poolguard"]["fleet_budget"]`` gets one :class:`LeaseKeeper` per process, a
daemon thread the runtime starts with the alias's pool. The pool never counts more connections
than its lease (``GuardedPool.lease_limit``, enforced where psycopg_pool grows, never per checkout),
and the lease is taken from a store every process shares (:mod:`.lease_stores`), so the fleet's
total never exceeds the budget, even while processes start together.

Every heartbeat (``PUBLISH_INTERVAL``) the keeper renews its lease (ttl: 3 intervals, so a dead
process's lease expires) and moves it toward the fair share, ``budget // live processes``:

- growing: the store grants first, then the pool's limits rise, then waiting clients get
  connections;
- shrinking: the pool's limits drop and idle connections close first, then the store records
  what is still open (never less), so busy connections are never taken away;
- borrowing: clients waiting at the cap wake the keeper, which asks for more while the fleet has
  unleased budget; a borrower above its share gives back (as connections turn idle) once another
  process lacks its share, and keeps what it borrowed while nobody does.

Between heartbeats, so that a scale-out converges in about one heartbeat rather than three:

- an exchange that shows a smaller share (more processes) or a process lacking its share lowers
  the pool at once, not at the next heartbeat;
- while the store records more than the pool still counts (busy connections closed as they came
  back over the lease), the keeper exchanges again within ``MIN_GAP``, so the budget is free for
  the others within a second;
- a process short of its share with clients waiting asks again every ``STARVED_GAP`` (with
  jitter), for ``STARVED_FOR`` heartbeats after it found itself short, even when the fleet had no
  unleased budget: the others free theirs within a heartbeat and a second.

When the store cannot answer, the pool runs on a static share (``DEPLOYMENT``'s instances x
processes, else ``min_size``), said once in the log and in health, until the store answers again.
"""

from __future__ import annotations

import logging
import math
import os
import random
import secrets
import threading
from collections.abc import Callable
from time import monotonic
from typing import Any

from django_poolguard.conf import AliasConfig, guard_settings, hostname
from django_poolguard.engine.pool import GuardedPool
from django_poolguard.fleet import lease_stores
from django_poolguard.fleet.lease_stores import Grant, LeaseStore
from django_poolguard.fleet.schema import LeaseSnapshot

logger = logging.getLogger("django_poolguard")

TTL_INTERVALS = 3  # a lease not renewed for this many heartbeats expires (as publish.SILENT_INTERVALS)
FIRST_LEASE_TIMEOUT = 2.0  # s a new pool waits for its first lease before running on the static share
MIN_GAP = 0.2  # s at least between two exchanges asked for by waiting clients or a freed connection
STARVED_GAP = 0.5  # s between a short process's early asks, x 0.75-1.25 (jitter: they do not ask in step)
STARVED_FOR = 2  # heartbeats (+ 1 s) after it found itself short a process asks early; then at heartbeats
FREED_POLL = 0.5  # s between looks at the pool while the store records more than it counts


def heartbeat_interval() -> float:
    return float(guard_settings.PUBLISH_INTERVAL)


def budget_key(config: AliasConfig, settings_dict: dict[str, Any]) -> str:
    """The workload and the database's identity, without credentials: ``web@db.internal:5432/shop``."""
    host = settings_dict.get("HOST") or "localhost"
    port = settings_dict.get("PORT") or "5432"
    return f"{config.workload}@{host}:{port}/{settings_dict.get('NAME') or ''}"


def new_owner() -> str:
    """This process's name in the store: a new token after fork, so a child never renews its parent's."""
    return f"{hostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def static_share(config: AliasConfig, budget: int, min_size: int) -> int:
    """What a process may hold without the store: its slice of the budget over the fleet's maximum
    shape (``DEPLOYMENT``), else ``min_size``; at least 1."""
    deployment = guard_settings.DEPLOYMENT
    shape = deployment.get(config.workload) if isinstance(deployment, dict) else None
    if isinstance(shape, dict):
        try:
            processes = int(shape.get("instances", 1)) * int(shape.get("processes", 1))
        except (TypeError, ValueError):
            processes = 0
        if processes >= 1:
            return max(1, budget // processes)
    return max(1, min_size)


class LeaseKeeper:
    """One alias's lease in this process: its state, its heartbeat thread, its pool's limits."""

    def __init__(
        self, pool: GuardedPool, settings_dict: dict[str, Any], store: LeaseStore | None = None
    ) -> None:
        config = pool.config
        self.alias = config.alias
        self.config = config
        self.settings_dict = settings_dict
        self.key = budget_key(config, settings_dict)
        self.owner = new_owner()
        self.store = store or lease_stores.store_for(config.alias, config.lease_store, config.lease_cache)
        self.pool = pool
        self.budget = 0
        self.lease = 0  # as the store recorded it at the last exchange
        self.limit = 0  # what the pool may count now (<= lease)
        self.members = 1
        self.fleet_held = 0
        self.wanting = 0  # what the others lack of their share, at the last exchange
        self.fallback = False
        self.fallback_reason: str | None = None
        self.min_short_logged = False
        self.last_attempt = -math.inf  # monotonic time of the last heartbeat, answered or not
        self.budget_read = -math.inf  # monotonic time the budget was last resolved ("auto": read)
        self.valid_until = math.inf  # monotonic time the store may expire the lease after, at the earliest
        self.short_since: float | None = None  # monotonic time this process found itself below its share
        self._starved_gap = STARVED_GAP
        # Woken by the pool (a client waits at the cap, under its lock; a connection closed over the
        # lease) and by stop(). _client_waited says which: a bool set before the Event.
        self._wake = threading.Event()
        self._client_waited = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        # Serializes heartbeats: the keeper's thread, the first lease and exit's release.
        self._lock = threading.Lock()

    # --- Lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Take the first lease (before the pool opens its connections) and start the heartbeat."""
        self._attach(self.pool)
        with self._lock:
            self._heartbeat(first=True)
        self._thread = threading.Thread(
            target=self._run, name=f"poolguard-lease-{self.alias}"[:60], daemon=True
        )
        self._thread.start()

    def adopt(self, pool: GuardedPool) -> None:
        """A replaced pool (the slot check) keeps the current lease."""
        with self._lock:
            self.pool = pool
            self._attach(pool)
            pool.set_lease(self.limit)

    def _attach(self, pool: GuardedPool) -> None:
        pool.lease_wanted = self._client_waits
        pool.lease_freed = self._wake.set
        pool.lease_view = self.snapshot

    def _client_waits(self) -> None:
        # Under the pool's lock: a flag and an Event, nothing else.
        self._client_waited = True
        self._wake.set()

    def stop(self, timeout: float = 2.0) -> None:
        self._stopping = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def release(self) -> None:
        """Give the lease back (at exit, once the pool is closed); expiry frees it otherwise."""
        self.stop()
        try:
            self.store.release(self.key, self.owner)
        except lease_stores.StoreUnavailable:
            pass  # it expires by the store's clock

    def _run(self) -> None:
        asked = False  # a client waits at the cap and asking could get it a connection
        while not self._stopping:
            if self._wake.is_set():
                self._wake.clear()
                if self._client_waited:
                    self._client_waited = False
                    asked = asked or self._worth_asking()
            freeing = self._freeing()
            if asked or freeing is True:
                gap = MIN_GAP
            elif self._starved():
                gap = self._starved_gap
            else:
                gap = heartbeat_interval()
            remaining = gap - (monotonic() - self.last_attempt)
            if remaining > 0:
                # While connections over the lease are still out, look again soon: one can also
                # leave the pool without coming back through it (a broken connection).
                self._wake.wait(remaining if freeing is None else min(remaining, FREED_POLL))
                continue  # woken or due: look again
            asked = False
            try:
                with self._lock:
                    self._heartbeat()
            except Exception:
                logger.exception("poolguard's fleet-budget lease of alias %r failed; it retries.", self.alias)

    def _worth_asking(self) -> bool:
        """Ask the store before the heartbeat only when it could say yes: the fleet had unleased
        budget at the last exchange. A full fleet is asked at heartbeats only, so a crowd of waiting
        processes does not queue on the store's lock."""
        return not self.fallback and self.budget > self.fleet_held

    def _freeing(self) -> bool | None:
        """After a shrink the store records more than the pool's cap until busy connections came
        back: True once the pool counts less than the store records (an exchange frees budget for
        the others), False while it does not yet, None when there is nothing to give back."""
        if self.fallback or self.lease <= self.limit:
            return None
        return self._counted(self.pool) < self.lease

    def _share(self, pool: GuardedPool) -> int:
        """The fair share, as of the last exchange, within the pool's ``max_size``."""
        return min(pool.configured_max, self.budget // max(1, self.members))

    def _starved(self) -> bool:
        """Below its share with clients waiting, in the first heartbeats after it found itself
        short (the others free their surplus within a heartbeat and a second): worth asking early
        even though the fleet had no unleased budget at the last exchange."""
        since = self.short_since
        if since is None or self.fallback or not self.pool.waiting():
            return False
        return monotonic() - since < STARVED_FOR * heartbeat_interval() + 1.0

    # --- One heartbeat -----------------------------------------------------------------------

    def _heartbeat(self, first: bool = False) -> None:
        pool = self.pool
        self.last_attempt = monotonic()
        # "auto" reads the server: once a heartbeat, not at every early exchange.
        if not self.budget or self.last_attempt - self.budget_read >= heartbeat_interval():
            self.budget_read = self.last_attempt
            try:
                self.budget = resolve_budget(self.config, self.settings_dict, self.budget)
            except Exception as exc:  # keep the last figure
                if not self.budget:
                    self._enter_fallback(f"the budget 'auto' could not be read: {type(exc).__name__}")
                    return
        ttl = TTL_INTERVALS * heartbeat_interval()
        started = monotonic()
        if started > self.valid_until and self.limit > 0 and not self.fallback:
            # The store may have expired this lease and granted it to others while connections were
            # still open here: the fleet may have been over budget for a moment. Say so.
            logger.warning(
                "poolguard renewed the fleet-budget lease of alias %r %.1f s after it could expire "
                "(ttl %.1f s): this process was stalled (CPU, GC, a blocked thread). Raise "
                "POOLGUARD['PUBLISH_INTERVAL'] if this repeats.",
                self.alias,
                started - self.valid_until,
                ttl,
            )
        try:
            if first:
                # Join first (want 0) to learn how many share the budget, then ask for a share.
                self._record(self.store.exchange(self.key, self.owner, 0, 0, self.budget, ttl))
            target = self._target(pool)
            if target < self.limit:
                # Shrink before telling the store: never record less than is open.
                self._apply(pool, target)
            hold = self._counted(pool)
            granted = self.store.exchange(self.key, self.owner, target, hold, self.budget, ttl)
        except lease_stores.StoreBusy:
            # Contended, not down: keep the current cap (never grow without the store) and retry.
            logger.debug(
                "poolguard's lease store of alias %r was busy; retrying at the next heartbeat", self.alias
            )
            return
        except lease_stores.StoreUnavailable as exc:
            self._enter_fallback(str(exc))
            return
        self._leave_fallback()
        self.valid_until = started + ttl  # the store's expiry is later: it started counting after us
        self._record(granted)
        limit = min(granted.lease, target)
        # What the store just said (more processes, one lacking its share) can lower the target:
        # shrink now rather than at the next heartbeat; the store learns the smaller hold as busy
        # connections come back (_freeing).
        limit = min(limit, self._target(pool))
        self._apply(pool, limit)
        self._note_short()
        self._say_min_short()

    def _note_short(self) -> None:
        if self.limit >= self._share(self.pool):
            self.short_since = None
            self._starved_gap = STARVED_GAP
            return
        if self.short_since is None:
            self.short_since = monotonic()
        # Jitter: the processes that joined together do not ask in step.
        self._starved_gap = STARVED_GAP * random.uniform(0.75, 1.25)

    def _target(self, pool: GuardedPool) -> int:
        """The lease to ask for: the fair share, more for waiting clients, borrowed budget kept
        while nobody else needs it."""
        maximum = pool.configured_max
        share = self._share(pool)
        if self.wanting > 0:
            return share  # others lack their share: a borrower gives back
        waiting = pool.waiting()
        if waiting and self.budget > self.fleet_held:
            return max(share, min(maximum, self.limit + waiting))  # borrow what nobody leases
        return max(share, min(maximum, self.limit))  # keep what was borrowed while nobody needs it

    def _record(self, granted: Grant) -> None:
        self.lease = granted.lease
        self.members = granted.members
        self.fleet_held = granted.fleet_held
        self.wanting = granted.wanting

    def _apply(self, pool: GuardedPool, limit: int) -> None:
        """Move the pool's cap: lower limits first and close idle surplus (never a busy
        connection); when it rose, let waiting clients have the new room."""
        grew = limit > self.limit
        self.limit = limit
        pool.set_lease(limit)
        surplus = self._counted(pool) - limit
        if surplus > 0:
            pool.close_idle(surplus)
        elif grew and pool.waiting():
            pool.grow_for_waiting()

    @staticmethod
    def _counted(pool: GuardedPool) -> int:
        """Connections the pool counts: open, being opened or out. A closed pool (not opened yet, or
        closed by ``close_pool()``) still has only its checkouts: they close when returned."""
        if pool.closed:
            return len(pool.ledger)
        return int(pool.get_stats()["pool_size"])

    # --- The store's outage -------------------------------------------------------------------

    def _enter_fallback(self, reason: str) -> None:
        pool = self.pool
        static = min(pool.configured_max, static_share(self.config, self.budget or 1, pool.configured_min))
        if not self.fallback:
            self.fallback = True
            self.fallback_reason = reason
            logger.warning(
                "poolguard cannot reach the %s lease store of alias %r (%s): its pool runs on a static "
                "share of %s connection(s) of the fleet budget until the store answers again.",
                self.store.kind,
                self.alias,
                reason,
                static,
            )
        if static != self.limit:
            self._apply(pool, static)
        self.lease = static

    def _leave_fallback(self) -> None:
        if self.fallback:
            self.fallback = False
            self.fallback_reason = None
            logger.info(
                "poolguard reaches the %s lease store of alias %r again: its pool is back under a lease.",
                self.store.kind,
                self.alias,
            )

    def _say_min_short(self) -> None:
        pool = self.pool
        if self.limit < pool.configured_min and not self.min_short_logged:
            self.min_short_logged = True
            logger.warning(
                "poolguard: alias %r runs with %s connection(s), below its min_size of %s: its share of "
                "the fleet budget (%s over %s process(es)) does not fit min_size. Lower min_size or "
                "raise fleet_budget.",
                self.alias,
                self.limit,
                pool.configured_min,
                self.budget,
                self.members,
            )

    # --- What views show ----------------------------------------------------------------------

    def snapshot(self) -> LeaseSnapshot:
        share = self.budget // max(1, self.members)
        maximum = self.pool.configured_max
        capped = None
        if self.limit < maximum:
            if self.fallback:
                capped = f"capped at {self.limit} by the static share of fleet budget {self.budget} (store unreachable)"
            else:
                processes = "process" if self.members == 1 else "processes"
                capped = (
                    f"capped at {self.limit} by fleet budget {self.budget} over {self.members} {processes}"
                )
        return {
            "budget": self.budget,
            "lease": self.limit,
            "share": share,
            "members": self.members,
            "fleet_held": self.fleet_held,
            "store": self.store.kind,
            "fallback": self.fallback,
            "capped": capped,
            "max_size": maximum,
        }


def resolve_budget(config: AliasConfig, settings_dict: dict[str, Any], last: int) -> int:
    """The alias's budget in connections: as configured, or ``"auto"`` read from the server."""
    if config.fleet_budget == "auto":
        from django_poolguard.fleet.budget import auto_budget  # reads the server

        return auto_budget(config.alias)
    return int(config.fleet_budget or 0)


# --- This process's keepers -------------------------------------------------------------------

_keepers: dict[str, LeaseKeeper] = {}
# Guards _keepers: pools are created on request threads, released at exit.
_keepers_lock = threading.Lock()
# Builds a keeper (tests swap the store this way).
keeper_factory: Callable[[GuardedPool, dict[str, Any]], LeaseKeeper] = LeaseKeeper


def keep_lease(pool: GuardedPool) -> None:
    """Put a new budgeted pool under a lease (the runtime calls this for every new pool)."""
    if pool.config.fleet_budget is None:
        return
    from django.db import connections

    alias = pool.config.alias
    with _keepers_lock:
        keeper = _keepers.get(alias)
        if keeper is not None:
            keeper.adopt(pool)
            return
        keeper = _keepers[alias] = keeper_factory(pool, connections[alias].settings_dict)
        keeper.start()


def lease_snapshot(alias: str) -> LeaseSnapshot | None:
    """The alias's lease as this process holds it; None without a fleet budget (or before its pool)."""
    keeper = _keepers.get(alias)
    return keeper.snapshot() if keeper is not None else None


def keeper(alias: str) -> LeaseKeeper | None:
    return _keepers.get(alias)


def release_all() -> None:
    """At exit, after the pools are closed and before the side connections: give every lease back."""
    with _keepers_lock:
        keepers = list(_keepers.values())
        _keepers.clear()
    for each in keepers:
        try:
            each.release()
        except Exception:
            logger.debug("poolguard could not release the lease of alias %r", each.alias, exc_info=True)


def stop_all() -> None:
    """Stop every keeper without releasing (a dropped runtime in tests)."""
    with _keepers_lock:
        keepers = list(_keepers.values())
        _keepers.clear()
    for each in keepers:
        each.stop()


def reset_after_fork() -> None:
    """In a forked child: the parent's keepers and leases are the parent's; the child takes its own."""
    global _keepers_lock
    _keepers_lock = threading.Lock()
    _keepers.clear()


__all__ = [
    "LeaseKeeper",
    "budget_key",
    "keep_lease",
    "keeper",
    "lease_snapshot",
    "release_all",
    "reset_after_fork",
    "static_share",
    "stop_all",
]
