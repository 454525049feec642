"""Pool alerts: sustained utilization, waiting, exhaustion and leaks, rate-limited.

A watchdog task (:func:`check`, right after the leak scan) looks at each pool's in-memory
state and counters and raises an alert when

- ``utilization``: in-use / max has stayed at or above ``ALERT_UTILIZATION`` for ``ALERT_AFTER`` s;
- ``waiting``: a client is waiting for a connection while all of them are in use;
- ``exhaustion``: checkouts timed out or were refused at once by a full wait queue
  (``timeouts_total``/``rejected_total`` grew);
- ``leak``: new leaks, hoards or reclaimed connections since the last check.

An alert is a WARNING on the ``django_poolguard`` logger naming the top holders, and the
``pool_alert`` signal (``sender=alias, kind, message, state``) for Sentry, Slack or paging.
Each (alias, kind) fires at most once per ``ALERT_REPEAT`` s; what happened meanwhile is
summed into the next one.
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass, field
from time import monotonic

from django_poolguard.conf import guard_settings
from django_poolguard.engine.pool import GuardedPool, all_pools, describe_holders
from django_poolguard.fleet.schema import AliasSnapshot
from django_poolguard.fleet.snapshots import pool_snapshot
from django_poolguard.signals import pool_alert

logger = logging.getLogger("django_poolguard")

TASK_NAME = "alerts"
UTILIZATION, WAITING, EXHAUSTION, LEAK = "utilization", "waiting", "exhaustion", "leak"


@dataclass
class _PoolWatch:
    """What the previous checks saw of one pool."""

    busy_since: float | None = None  # when utilization last rose to the threshold
    failures_seen: int = 0  # timeouts_total + rejected_total already alerted on
    leaks_seen: tuple[int, int, int] = (0, 0, 0)  # leaks, hoards, reclaimed already alerted on
    last_sent: dict[str, float] = field(default_factory=dict)


_watches: weakref.WeakKeyDictionary[GuardedPool, _PoolWatch] = weakref.WeakKeyDictionary()
# Serializes checks: the watchdog thread and run_once() from a test or command may check at once.
_check_lock = threading.Lock()


def check() -> None:
    """Raise the alerts that are due for every pool of this process."""
    with _check_lock:
        for pool in all_pools().values():
            try:
                _check_pool(pool)
            except Exception:
                logger.exception("poolguard could not check pool %r for alerts", pool.config.alias)


def _check_pool(pool: GuardedPool) -> None:
    watch = _watches.get(pool)
    if watch is None:
        watch = _watches[pool] = _PoolWatch()
    now = monotonic()
    ledger = pool.ledger
    state = pool.state()
    alias = pool.config.alias
    utilization = state["in_use"] / state["max"] if state["max"] else 0.0
    threshold = float(guard_settings.ALERT_UTILIZATION)
    due: list[tuple[str, str]] = []

    if utilization >= threshold:
        if watch.busy_since is None:
            watch.busy_since = now
        busy_for = now - watch.busy_since
        if busy_for >= float(guard_settings.ALERT_AFTER):
            due.append(
                (
                    UTILIZATION,
                    f"pool {alias!r} has been at {utilization:.0%} or more for {busy_for:.0f} s "
                    f"({state['in_use']}/{state['max']} in use, ALERT_UTILIZATION {threshold:.0%})",
                )
            )
    else:
        watch.busy_since = None

    # Waiting while the pool is still opening connections (in_use < max) is growth, not pressure.
    if state["waiting"] > 0 and state["in_use"] >= state["max"]:
        due.append(
            (
                WAITING,
                f"pool {alias!r} has {state['waiting']} request(s) waiting for a connection "
                f"({state['in_use']}/{state['max']} in use)",
            )
        )

    # Every refused checkout is a timeout or a rejection; a 503 the middleware sheds is one of them.
    failures = ledger.timeouts_total + ledger.rejected_total
    if failures > watch.failures_seen and _may_send(watch, EXHAUSTION, now):
        due.append(
            (
                EXHAUSTION,
                f"pool {alias!r} was exhausted: {failures - watch.failures_seen} checkout(s) timed out "
                f"or were refused since the last alert ({ledger.timeouts_total} timeouts and "
                f"{ledger.rejected_total} refusals by a full wait queue in total)",
            )
        )
        watch.failures_seen = failures

    leaks = (ledger.leaks_total, ledger.hoards_total, ledger.reclaimed_total)
    if leaks != watch.leaks_seen and _may_send(watch, LEAK, now):
        new = [total - seen for total, seen in zip(leaks, watch.leaks_seen, strict=True)]
        due.append(
            (
                LEAK,
                f"pool {alias!r}: {new[0]} new suspected leak(s), {new[1]} connection(s) idle in "
                f"transaction and {new[2]} reclaimed from dead holders since the last alert",
            )
        )
        watch.leaks_seen = leaks

    for kind, message in due:
        if not _may_send(watch, kind, now):
            continue
        watch.last_sent[kind] = now
        holders = describe_holders(pool)
        full = f"{message}; {holders}." if holders else f"{message}."
        _send(alias, kind, full, pool_snapshot(pool, with_checkouts=False))


def _may_send(watch: _PoolWatch, kind: str, now: float) -> bool:
    last = watch.last_sent.get(kind)
    return last is None or now - last >= float(guard_settings.ALERT_REPEAT)


def _send(alias: str, kind: str, message: str, state: AliasSnapshot) -> None:
    logger.warning("Pool alert (%s): %s", kind, message, extra={"poolguard": {"kind": kind, "alias": alias}})
    for receiver, result in pool_alert.send_robust(sender=alias, kind=kind, message=message, state=state):
        if isinstance(result, Exception):
            logger.error(
                "poolguard pool_alert receiver %r failed: %s",
                receiver,
                result,
                exc_info=(type(result), result, result.__traceback__),
            )


def reset_after_fork() -> None:
    """In a forked child (the runtime calls this): the parent's watches and lock are not ours."""
    global _check_lock
    _check_lock = threading.Lock()
    _watches.clear()


__all__ = ["TASK_NAME", "check", "reset_after_fork"]
