"""Leak detection, dead-holder reclaim and hoarding: the watchdog's scan of every ledger.

Every ``MONITOR_INTERVAL`` the watchdog calls :func:`scan`, which walks each pool's
checkouts and

- **reclaims** a connection whose holder thread has exited or whose Django wrapper was
  garbage-collected: nobody can return it any more, so it is rolled back and put back
  into the pool (the Rails reaper idea); Django's own pool loses such a slot forever;
- **reports a leak** when a checkout has been held longer than the alias's
  ``leak_threshold``, once per checkout, and "returned after N s (unleaked)" when it
  comes back later (HikariCP's behaviour);
- **reports hoarding** when a connection sits idle inside an open transaction longer
  than ``hoard_threshold``, naming where the transaction began.

Each finding is a :class:`LeakReport`: logged on the ``django_poolguard`` logger, sent
with a signal (see :mod:`django_poolguard.signals`) and queued for the ``LeakEvent``
table (:mod:`django_poolguard.watchdog.leak_events`). Nothing here runs on a request thread.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import weakref
from time import monotonic
from typing import Any

from psycopg.pq import TransactionStatus

from django_poolguard.conf import guard_settings, hostname
from django_poolguard.engine import stacks
from django_poolguard.engine.ledger import Checkout
from django_poolguard.engine.pool import GuardedPool, all_pools
from django_poolguard.signals import connection_reclaimed, leak_detected, leak_resolved
from django_poolguard.watchdog import leak_events
from django_poolguard.watchdog.reports import LeakReport

logger = logging.getLogger("django_poolguard")

TASK_NAME = "leaks"
LEAK, HOARD, RECLAIMED = "leak", "hoard", "reclaimed"
THREAD_EXITED, WRAPPER_COLLECTED = "thread_exited", "wrapper_collected"
CONNECTION_DROPPED = "connection_dropped"


def _report(pool: GuardedPool, checkout: Checkout, kind: str, **extra: Any) -> LeakReport:
    raw = checkout.tx_stack if kind == HOARD and checkout.tx_stack else checkout.stack
    return LeakReport(
        alias=pool.config.alias,
        workload=pool.config.workload,
        kind=kind,
        thread=checkout.holder,
        thread_alive=checkout.alive,
        context=checkout.label,
        held=round(checkout.held, 3),
        stack=tuple(stacks.format_stack(raw)),
        origin=stacks.origin(raw),
        # Without stacks (CAPTURE_STACKS off) the context is the best "same place" there is.
        fingerprint=stacks.fingerprint(raw) if raw else _context_fingerprint(checkout.label),
        host=hostname(),
        pid=os.getpid(),
        **extra,
    )


def _context_fingerprint(context: str) -> str:
    return hashlib.sha1(f"context:{context}".encode(), usedforsecurity=False).hexdigest()[:16]


# --- Watchdog state -------------------------------------------------------------------------

# Checkouts reported as leaks and not yet seen returned, per pool: id(checkout) -> (checkout,
# report). Holding the checkout keeps its id unique; the entries are bounded by max_size.
_reported: weakref.WeakKeyDictionary[GuardedPool, dict[int, tuple[Checkout, LeakReport]]] = (
    weakref.WeakKeyDictionary()
)
# Serializes scans: the watchdog thread and run_once() from a test or command may scan at once.
_scan_lock = threading.Lock()


def scan() -> None:
    """One pass over every pool of this process: reclaim, report leaks and hoards, notice returns."""
    with _scan_lock:
        pools = list(all_pools().values())
        # A pool closed or replaced since a leak was reported still owes us its "returned" report.
        pools += [pool for pool in list(_reported.keys()) if pool not in pools]
        for pool in pools:
            try:
                _scan_pool(pool)
            except Exception:
                logger.exception("poolguard could not scan pool %r for leaks", pool.config.alias)


def suspected_leak(held: float, leak_threshold: float) -> bool:
    """A checkout held this long is a suspected leak: the watchdog reports it, the dashboard marks it."""
    return held > leak_threshold


def _scan_pool(pool: GuardedPool) -> None:
    reported = _reported.setdefault(pool, {})
    now = monotonic()
    checkouts = pool.ledger.checkouts()
    current = {id(c) for c in checkouts}
    for key, (checkout, report) in list(reported.items()):
        if key not in current:
            del reported[key]
            _resolved(checkout, report)

    reclaim_enabled = guard_settings.RECLAIM_DEAD_THREADS
    leak_threshold = pool.config.leak_threshold
    hoard_threshold = pool.config.hoard_threshold
    for checkout in checkouts:
        if reclaim_enabled:
            reason = _orphaned(checkout)
            if reason is not None:
                reported.pop(id(checkout), None)
                reclaim(pool, checkout, reason)
                continue
        if checkout.reported is None and suspected_leak(now - checkout.started, leak_threshold):
            report = _report(pool, checkout, LEAK)
            checkout.reported = now
            reported[id(checkout)] = (checkout, report)
            pool.ledger.count("leaks_total")
            _announce_leak(report)
        if _hoarding(checkout, now, hoard_threshold):
            report = _report(pool, checkout, HOARD, idle=round(now - checkout.last_used, 3))
            checkout.hoard_reported = now
            pool.ledger.count("hoards_total")
            _announce_hoard(report, now - (checkout.tx_started or now))
    if not reported:
        _reported.pop(pool, None)


def _orphaned(checkout: Checkout) -> str | None:
    """Why nobody can return this checkout any more, or None while its holder may still do it."""
    ref = checkout.wrapper_ref
    wrapper = ref() if ref is not None else None
    if not checkout.alive:
        if wrapper is not None and wrapper.allow_thread_sharing:
            # Another thread may legitimately use this wrapper (LiveServerTestCase, some ASGI setups).
            return None
        return THREAD_EXITED  # the root cause, even when its thread-local wrapper is gone as well
    if ref is not None and wrapper is None:
        return WRAPPER_COLLECTED
    if wrapper is not None and wrapper.connection is not checkout.connection:
        # The wrapper let go of it without returning it (its close() was interrupted after Django
        # cleared the attribute). Also true for a microsecond while a checkout is being made, hence
        # two scans in a row.
        if checkout.dropped_seen:
            return CONNECTION_DROPPED
        checkout.dropped_seen = True
        return None
    checkout.dropped_seen = False
    return None


def _hoarding(checkout: Checkout, now: float, threshold: float) -> bool:
    tx_started = checkout.tx_started
    if tx_started is None:
        return False
    if checkout.hoard_reported is not None and checkout.hoard_reported >= tx_started:
        return False  # this transaction was reported already; a new one gets a new report
    if now - checkout.last_used <= threshold:
        return False
    try:
        status = checkout.connection.pgconn.transaction_status
    except Exception:
        return False
    # "idle in transaction" (INTRANS) or "idle in transaction (aborted)" (INERROR): waiting on
    # the application, not running a query (ACTIVE), and still holding its locks.
    return status in (TransactionStatus.INTRANS, TransactionStatus.INERROR)


def reclaim(pool: GuardedPool, checkout: Checkout, reason: str) -> None:
    """Give an orphaned checkout's slot back to the pool: roll back, detach, return, report."""
    if pool.ledger.checkout_of(id(checkout.connection)) is not checkout:
        return  # returned meanwhile
    report = _report(pool, checkout, RECLAIMED, reason=reason)
    connection = checkout.connection
    wrapper = checkout.wrapper_ref() if checkout.wrapper_ref is not None else None
    if wrapper is not None:
        _detach(wrapper, connection)
    try:
        if connection.pgconn.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
            connection.rollback()  # ourselves, so psycopg_pool does not log its own warning
    except Exception as exc:
        logger.info(
            "Rollback of a reclaimed connection on %r failed (%s); the pool will discard it.",
            pool.config.alias,
            exc,
        )
    try:
        pool.putconn(connection)
    except Exception:
        logger.exception("poolguard could not return a reclaimed connection to pool %r", pool.config.alias)
        return
    pool.ledger.count_reclaimed(reason)
    _announce_reclaim(report)


def _detach(wrapper: Any, connection: Any) -> None:
    """A wrapper that outlived its dead thread must never touch the returned connection again."""
    if getattr(wrapper, "connection", None) is connection:
        wrapper.forget_connection()


# --- Reporting -----------------------------------------------------------------------------


def _send(signal: Any, alias: str, **kwargs: Any) -> None:
    for receiver, result in signal.send_robust(sender=alias, **kwargs):
        if isinstance(result, Exception):
            logger.error(
                "poolguard signal receiver %r failed: %s",
                receiver,
                result,
                exc_info=(type(result), result, result.__traceback__),
            )


def _announce_leak(report: LeakReport) -> None:
    logger.warning(
        "Connection leak suspected on %r: held for %.1f s by %s%s, taken at %s. "
        "Acquire stack (application frames first):\n%s",
        report.alias,
        report.held,
        report.holder,
        "" if report.thread_alive else " (thread exited)",
        report.where,
        report.formatted_stack(),
        extra={"poolguard": report.as_dict()},
    )
    _send(leak_detected, report.alias, event=report)
    leak_events.record(report)


def _announce_hoard(report: LeakReport, transaction_age: float) -> None:
    logger.warning(
        "Connection on %r idle in transaction for %.1f s (transaction open %.1f s) by %s; "
        "the transaction began at %s. Commit before slow work (HTTP calls, sleeps) so the connection "
        "and its locks are free. Where the transaction began (application frames first):\n%s",
        report.alias,
        report.idle or 0.0,
        transaction_age,
        report.holder,
        report.where,
        report.formatted_stack(),
        extra={"poolguard": report.as_dict()},
    )
    _send(leak_detected, report.alias, event=report)
    leak_events.record(report)


def _announce_reclaim(report: LeakReport) -> None:
    why = {
        THREAD_EXITED: "the thread exited without returning it",
        WRAPPER_COLLECTED: "its Django connection object was garbage-collected without closing it",
        CONNECTION_DROPPED: "its Django connection object let go of it without returning it (an "
        "exception interrupted close())",
    }.get(report.reason or "", "nobody could return it any more")
    logger.warning(
        "Reclaimed a connection on %r from %s: %s after %.1f s (taken at %s). The slot is back in "
        "the pool; close connections at the end of that code path (django.db.connections.close_all() "
        "when a thread finishes). Acquire stack (application frames first):\n%s",
        report.alias,
        report.holder,
        why,
        report.held,
        report.where,
        report.formatted_stack(),
        extra={"poolguard": report.as_dict()},
    )
    _send(connection_reclaimed, report.alias, event=report, reason=report.reason)
    leak_events.record(report)


def _resolved(checkout: Checkout, report: LeakReport) -> None:
    held = (checkout.returned or monotonic()) - checkout.started
    logger.info(
        "Connection on %r held by %s returned after %.1f s (unleaked); "
        "it was reported as a suspected leak at %.1f s (taken at %s).",
        report.alias,
        report.holder,
        held,
        report.held,
        report.where,
        extra={"poolguard": {**report.as_dict(), "returned_after": round(held, 3)}},
    )
    _send(leak_resolved, report.alias, event=report, held=round(held, 3))


def reset_after_fork() -> None:
    """In a forked child (the runtime calls this): the parent reports its own leaks."""
    global _scan_lock
    _scan_lock = threading.Lock()
    _reported.clear()


__all__ = ["TASK_NAME", "LeakReport", "reclaim", "reset_after_fork", "scan"]
