"""This process's pools as plain data: the ``processes[].aliases`` shape of ``poolstats --json``."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from django_poolguard.conf import guard_settings, hostname
from django_poolguard.engine.context import process_role
from django_poolguard.engine.ledger import percentiles
from django_poolguard.engine.pool import GuardedPool, all_pools

HEALTHY, WARNING, CRITICAL = "healthy", "warning", "critical"
_SEVERITY = {HEALTHY: 0, WARNING: 1, CRITICAL: 2}
CRITICAL_WAITING = 10  # more waiters than this with nothing idle is an outage, not a blip


def status(state: dict[str, Any], *, cannot_connect: bool = False) -> str:
    """healthy / warning / critical, from in-memory numbers only (see the SPEC's Health section)."""
    if cannot_connect or (state["idle"] == 0 and state["waiting"] > CRITICAL_WAITING):
        return CRITICAL
    if state["waiting"] > 0 or state["utilization"] >= guard_settings.ALERT_UTILIZATION:
        return WARNING
    return HEALTHY


def worst(statuses: list[str]) -> str:
    return max(statuses, key=_SEVERITY.__getitem__, default=HEALTHY)


def cannot_connect(pool: GuardedPool, state: dict[str, Any]) -> bool:
    """The pool holds no connection at all and its last attempt to open one failed.

    ``size`` is not used: psycopg_pool counts a connection it keeps retrying as part of it.
    """
    return state["in_use"] == 0 and state["idle"] == 0 and pool.connect_failing


def pool_state(pool: GuardedPool) -> dict[str, Any]:
    """The pool's sizes plus ``utilization`` and ``status``: what health and snapshots share."""
    state: dict[str, Any] = dict(pool.state())
    state["utilization"] = round(state["in_use"] / state["max"], 4) if state["max"] else 0.0
    state["status"] = status(state, cannot_connect=cannot_connect(pool, state))
    return state


def pool_snapshot(
    pool: GuardedPool, *, with_checkouts: bool = True, stack_limit: int | None = 20
) -> dict[str, Any]:
    state = pool_state(pool)
    ledger = pool.ledger
    checkouts = ledger.checkouts()
    data: dict[str, Any] = {
        "workload": pool.config.workload,
        **state,
        "acquire_ms": percentiles(ledger.acquire_samples()),
        "held_ms": percentiles(ledger.held_samples()),
        "acquired_total": ledger.acquired_total,
        "timeouts_total": ledger.timeouts_total,
        "rejected_total": ledger.rejected_total,
        "shed_total": ledger.shed_total,
        "leaks_active": sum(1 for c in checkouts if c.reported is not None),
        "leaks_total": ledger.leaks_total,
        "hoards_total": ledger.hoards_total,
        "reclaimed_total": ledger.reclaimed_total,
        "reclaimed_by_reason": dict(ledger.reclaimed_by_reason),
        "connections_opened_total": pool.connections_opened(),
        "connection_errors_total": pool.connection_errors(),
        "leak_threshold": pool.config.leak_threshold,
    }
    if with_checkouts:
        data["checkouts"] = [c.as_dict(stack_limit) for c in checkouts]
    if guard_settings.PROFILE:
        data["top"] = ledger.profile.rows()  # the pool-time profile (fleet/top.py sums it)
    return data


def snapshot(*, with_checkouts: bool = True, stack_limit: int | None = 20) -> dict[str, Any]:
    """This process's state per alias, as in ``poolstats --json`` ``processes[].aliases``."""
    return {
        alias: pool_snapshot(pool, with_checkouts=with_checkouts, stack_limit=stack_limit)
        for alias, pool in sorted(all_pools().items())
    }


def process_snapshot(**kwargs: Any) -> dict[str, Any]:
    """One ``processes[]`` entry: this process's identity plus :func:`snapshot`."""
    return {
        "host": hostname(),
        "pid": os.getpid(),
        "role": process_role(),
        "updated_at": datetime.now(UTC).isoformat(),
        "aliases": snapshot(**kwargs),
    }
