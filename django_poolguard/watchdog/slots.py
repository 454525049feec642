"""The slot check: every connection psycopg_pool counts is idle, checked out, or on its way.

For each pool, every ``MONITOR_INTERVAL`` the watchdog verifies

    size == idle + in_use (ledger entries) + opening + returning

An exception that lands inside psycopg_pool between taking a connection and handing it over (a
Celery soft time limit, ``KeyboardInterrupt``, a gevent timeout: they can strike at any bytecode)
loses the connection while psycopg_pool still counts it; nobody ever returns it and the pool is one
connection smaller for good. Seen from outside, that is a slot missing. A check that fails on two
consecutive scans (so a checkout caught mid-way never counts) is a violation: it is logged, counted
(``invariant_violations_total``, the ``poolguard_pool_invariant_violations_total`` metric), turns the
alias's health critical for ``CRITICAL_FOR`` seconds, and the slots are recovered: a new connection
is opened for each missing one, as psycopg_pool does for a broken one.

A pool whose lock stays taken, or that makes no progress while clients wait although it has idle
connections or room to grow, is wedged: it is replaced by a fresh pool (its waiting clients get
``PoolClosed``), and the old one is closed in the background.
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass, field
from time import monotonic, sleep

from django_poolguard.engine.pool import SLOTS_CRITICAL_FOR, GuardedPool, SlotCount, all_pools, replace_pool

logger = logging.getLogger("django_poolguard")

TASK_NAME = "slots"
SAMPLES = 20  # counts taken before a missing slot is believed for this scan
SAMPLE_GAP = 0.002  # s between counts: lets checkouts caught mid-way finish
LOCK_TIMEOUT = 1.0  # s a scan waits for the pool's lock before calling it stuck
ABANDONED_AFTER = 1.0  # s a queued client must go unwaited-on before it is taken off the queue
CRITICAL_FOR = SLOTS_CRITICAL_FOR  # s the alias's health stays critical after a violation


@dataclass
class _Watch:
    """What the previous scan saw of one pool."""

    missing: int = 0  # slots missing in every count of the previous scan
    surplus: int = 0  # connections beyond what psycopg_pool counts, in every count
    growing_lost: bool = False
    locked: int = 0  # consecutive scans that could not take the pool's lock
    stalled: int = 0  # consecutive scans with clients waiting, no checkout, and a connection to give
    acquired: int = -1  # the ledger's acquired_total at the previous scan
    # Queued clients nobody waits on, by id: (client, when first seen).
    abandoned: dict[int, tuple[object, float]] = field(default_factory=dict)


_watches: weakref.WeakKeyDictionary[GuardedPool, _Watch] = weakref.WeakKeyDictionary()
# Serializes checks: the watchdog thread and run_once() from a test may check at once.
_check_lock = threading.Lock()


def check() -> None:
    """One pass over every pool of this process (the watchdog's ``slots`` task)."""
    with _check_lock:
        for alias, pool in all_pools().items():
            if pool.closed:
                continue  # not opened yet (first checkout opens it), or closing
            try:
                _check_pool(alias, pool)
            except Exception:
                logger.exception("poolguard could not check the slots of pool %r", alias)


def _sample(pool: GuardedPool) -> tuple[SlotCount, int, int, bool] | None:
    """The last count, with the fewest missing and surplus slots over up to ``SAMPLES`` counts.

    A healthy pool answers with one count; a fault must show in every count to be believed.
    """
    missing = surplus = None
    growing_lost = True
    count: SlotCount | None = None
    for index in range(SAMPLES):
        if index:
            sleep(SAMPLE_GAP)
        count = pool.count_slots(LOCK_TIMEOUT)
        if count is None:
            return None
        missing = count.missing if missing is None else min(missing, count.missing)
        surplus = count.surplus if surplus is None else min(surplus, count.surplus)
        growing_lost = growing_lost and count.growing_lost
        if not missing and not surplus and not growing_lost:
            break
    assert count is not None and missing is not None and surplus is not None
    return count, missing, surplus, growing_lost


def _check_pool(alias: str, pool: GuardedPool) -> None:
    watch = _watches.setdefault(pool, _Watch())
    sampled = _sample(pool)
    if sampled is None:
        watch.locked += 1
        if watch.locked >= 2:
            _replace(
                alias,
                pool,
                f"its lock has stayed taken for {watch.locked} checks in a row (over "
                f"{watch.locked * LOCK_TIMEOUT:.0f} s): a thread was interrupted while holding it, and "
                "every checkout and return now waits for ever",
            )
        return
    watch.locked = 0
    count, missing, surplus, growing_lost = sampled

    faults: list[str] = []  # one violation per scan, however many ways it shows
    now = monotonic()
    abandoned: dict[int, tuple[object, float]] = {}
    for client in pool.abandoned_waiters():
        seen = watch.abandoned.get(id(client))
        abandoned[id(client)] = (client, seen[1] if seen is not None and seen[0] is client else now)
    # Abandoned for a whole second: a live thread gets from the queue into its wait in microseconds.
    still = [client for client, since in abandoned.values() if now - since >= ABANDONED_AFTER]
    if still:
        pool.fail_waiters(still)
        faults.append(
            f"{len(still)} queued checkout(s) were abandoned: an exception interrupted them after they "
            "queued, and each would have swallowed the next connection returned. Took them off the queue"
        )
    watch.abandoned = {key: seen for key, seen in abandoned.items() if now - seen[1] < ABANDONED_AFTER}
    if missing and watch.missing:
        lost = min(missing, watch.missing)
        faults.append(
            f"{lost} of its {count.size} connections are lost: psycopg_pool counts {count.size} but "
            f"{count.idle} are idle, {count.in_use} checked out, {count.opening} being opened and "
            f"{count.returning} being returned. An exception (a time limit, KeyboardInterrupt, a bug) "
            f"interrupted a checkout or return inside the pool. Opening {lost} new connection(s) in "
            "their place"
        )
        pool.restore_slots(lost, growing_lost=False)
    if surplus and watch.surplus:
        closed = pool.discard_surplus(min(surplus, watch.surplus))
        faults.append(
            f"it holds {min(surplus, watch.surplus)} connection(s) more than the {count.size} psycopg_pool "
            f"counts (a lost connection came back); closed {closed} idle one(s)"
        )
    if growing_lost and watch.growing_lost:
        faults.append(
            "psycopg_pool believes it is opening a connection to grow, but nothing is: it would never "
            "grow again. Letting it grow"
        )
        pool.restore_slots(0, growing_lost=True)
    repaired = bool(faults)
    if repaired:
        _violation(pool, "; ".join(faults))
    # A fault acted on is gone from what the next scan compares with.
    watch.missing = 0 if repaired else missing
    watch.surplus = 0 if repaired else surplus
    watch.growing_lost = False if repaired else growing_lost

    acquired = pool.ledger.acquired_total
    waiting = pool.waiting()
    # A pool at its fleet-budget lease has no room, whatever max_size says: its waiters wait for returns.
    can_serve = count.idle > 0 or (count.size < pool.size_limit() and count.opening == 0)
    if waiting and can_serve and acquired == watch.acquired and not repaired:
        watch.stalled += 1
    else:
        watch.stalled = 0
    watch.acquired = acquired
    if watch.stalled >= 2:
        room = f"{count.idle} idle" if count.idle else f"room for {pool.size_limit() - count.size} more"
        _replace(
            alias,
            pool,
            f"{waiting} client(s) have waited through {watch.stalled} checks with {room} connection(s) "
            "and not one checkout succeeded: it no longer hands connections out",
        )


def _violation(pool: GuardedPool, what: str) -> None:
    pool.ledger.count("invariant_violations_total")
    pool.slots_broken_at = monotonic()
    logger.error(
        "Pool %r broke its slot invariant (size = idle + checked out + opening + returning): %s.",
        pool.config.alias,
        what,
    )


def _replace(alias: str, pool: GuardedPool, why: str) -> None:
    if all_pools().get(alias) is not pool:
        return  # not current any more: somebody replaced or closed it meanwhile
    fresh = replace_pool(alias, pool)
    if fresh is not None:
        fresh.ledger.count("invariant_violations_total")  # counted on the pool the exporter still sees
        fresh.slots_broken_at = monotonic()
    logger.error(
        "Replaced the pool of %r with a fresh one: %s. Its waiting clients get PoolClosed; the old "
        "pool is closed in the background.",
        alias,
        why,
    )


def reset_after_fork() -> None:
    """In a forked child (the runtime calls this): the parent's scans and lock are not ours."""
    global _check_lock
    _check_lock = threading.Lock()
    _watches.clear()


__all__ = ["CRITICAL_FOR", "TASK_NAME", "check", "reset_after_fork"]
