"""This process's pools as published data: the shapes of :mod:`~django_poolguard.fleet.schema`
(the ``processes[]`` entries of ``poolstats --json``)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from django_poolguard.conf import guard_settings, hostname
from django_poolguard.engine import stacks
from django_poolguard.engine.context import process_role
from django_poolguard.engine.ledger import Checkout, percentiles
from django_poolguard.engine.pool import GuardedPool, all_pools
from django_poolguard.engine.priority import PRIORITY_CLASSES
from django_poolguard.fleet.schema import (
    CRITICAL,
    HEALTHY,
    SCHEMA_VERSION,
    WARNING,
    AliasSnapshot,
    CheckoutSnapshot,
    Percentiles,
    PoolState,
    PrioritySnapshot,
    ProcessSnapshot,
)

__all__ = [
    "CRITICAL",
    "HEALTHY",
    "WARNING",
    "checkout_snapshot",
    "pool_snapshot",
    "pool_state",
    "process_snapshot",
    "snapshot",
    "status",
    "worst",
]

_SEVERITY = {HEALTHY: 0, WARNING: 1, CRITICAL: 2}
CRITICAL_WAITING = 10  # more waiters than this with nothing idle is an outage, not a blip


def status(state: PoolState, *, cannot_connect: bool = False, slots_broken: bool = False) -> str:
    """healthy / warning / critical, from in-memory numbers only (see the Health section of the docs)."""
    if cannot_connect or slots_broken or (state["idle"] == 0 and state["waiting"] > CRITICAL_WAITING):
        return CRITICAL
    if state["waiting"] > 0 or state["utilization"] >= guard_settings.ALERT_UTILIZATION:
        return WARNING
    return HEALTHY


def worst(statuses: list[str]) -> str:
    return max(statuses, key=_SEVERITY.__getitem__, default=HEALTHY)


def cannot_connect(pool: GuardedPool, state: PoolState) -> bool:
    """The pool holds no connection at all and its last attempt to open one failed.

    ``size`` is not used: psycopg_pool counts a connection it keeps retrying as part of it.
    """
    return state["in_use"] == 0 and state["idle"] == 0 and pool.connect_failing


def pool_state(pool: GuardedPool) -> PoolState:
    """The pool's sizes plus ``utilization`` and ``status``: what health and snapshots share."""
    sizes = pool.state()
    state: PoolState = {
        "min": sizes["min"],
        "max": sizes["max"],
        "size": sizes["size"],
        "in_use": sizes["in_use"],
        "idle": sizes["idle"],
        "waiting": sizes["waiting"],
        "utilization": round(sizes["in_use"] / sizes["max"], 4) if sizes["max"] else 0.0,
        "status": HEALTHY,
    }
    state["status"] = status(
        state, cannot_connect=cannot_connect(pool, state), slots_broken=pool.slots_broken_recently()
    )
    return state


def pool_snapshot(
    pool: GuardedPool, *, with_checkouts: bool = True, stack_limit: int | None = 20
) -> AliasSnapshot:
    state = pool_state(pool)
    ledger = pool.ledger
    checkouts = ledger.checkouts()
    data: AliasSnapshot = {
        "workload": pool.config.workload,
        **state,
        "acquire_ms": _percentiles(ledger.acquire_samples()),
        "held_ms": _percentiles(ledger.held_samples()),
        "acquired_total": ledger.acquired_total,
        "timeouts_total": ledger.timeouts_total,
        "rejected_total": ledger.rejected_total,
        "shed_total": ledger.shed_total,
        "leaks_active": sum(1 for c in checkouts if c.reported is not None),
        "leaks_total": ledger.leaks_total,
        "hoards_total": ledger.hoards_total,
        "reclaimed_total": ledger.reclaimed_total,
        "reclaimed_by_reason": dict(ledger.reclaimed_by_reason),
        "release": pool.config.release,
        "released_total": ledger.released_total,
        "pinned_by_reason": dict(ledger.pinned_by_reason),
        "connections_opened_total": pool.connections_opened(),
        "connection_errors_total": pool.connection_errors(),
        "leak_threshold": pool.config.leak_threshold,
    }
    if with_checkouts:
        data["checkouts"] = [checkout_snapshot(c, stack_limit) for c in checkouts]
    if pool.admission is not None or ledger.shed_by_priority:
        data["priorities"] = priority_snapshot(pool)
    if guard_settings.PROFILE:
        data["top"] = ledger.profile.rows()  # the pool-time profile (fleet/top.py sums it)
    if pool.lease_view is not None:  # set by the fleet budget's lease keeper (fleet/leases.py)
        data["lease"] = pool.lease_view()
    return data


def priority_snapshot(pool: GuardedPool) -> dict[str, PrioritySnapshot]:
    """Served, refused and shed checkouts and acquire times, by priority class."""
    shed = dict(pool.ledger.shed_by_priority)
    admission = pool.admission
    totals = admission.totals() if admission is not None else {}
    out: dict[str, PrioritySnapshot] = {}
    for rank, name in enumerate(PRIORITY_CLASSES):
        total = totals.get(name)
        out[name] = {
            "acquired_total": total.acquired if total else 0,
            "refused_total": total.refused if total else 0,
            "shed_total": shed.get(name, 0),
            "acquire_ms": _percentiles(admission.acquire_samples(rank) if admission else []),
        }
    return out


def checkout_snapshot(checkout: Checkout, stack_limit: int | None = 20) -> CheckoutSnapshot:
    return {
        "thread": checkout.holder,
        "alive": checkout.alive,
        "held_s": round(checkout.held, 3),
        "wait_ms": round(checkout.wait * 1000, 3),
        "context": checkout.label,
        "in_transaction": checkout.tx_started is not None,
        "held_reason": checkout.held_reason or "",
        "stack": stacks.format_stack(checkout.stack, stack_limit),
    }


def _percentiles(samples: list[float]) -> Percentiles:
    values = percentiles(samples)
    return {"p50": values["p50"], "p95": values["p95"], "p99": values["p99"]}


def snapshot(*, with_checkouts: bool = True, stack_limit: int | None = 20) -> dict[str, AliasSnapshot]:
    """This process's state per alias, as in ``poolstats --json`` ``processes[].aliases``."""
    return {
        alias: pool_snapshot(pool, with_checkouts=with_checkouts, stack_limit=stack_limit)
        for alias, pool in sorted(all_pools().items())
    }


def process_snapshot(**kwargs: Any) -> ProcessSnapshot:
    """One ``processes[]`` entry: the schema version, this process's identity plus :func:`snapshot`."""
    return {
        "schema": SCHEMA_VERSION,
        "host": hostname(),
        "pid": os.getpid(),
        "role": process_role(),
        "updated_at": datetime.now(UTC).isoformat(),
        "aliases": snapshot(**kwargs),
    }
