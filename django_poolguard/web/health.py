"""The health report: each alias's pool state and status, from this process's memory only.

It never borrows a connection, runs no SQL and shows no stacks, so it answers in well under
a millisecond of work even while every pool is exhausted (a readiness probe that queues for
a connection for 30 s is an outage of its own).
"""

from __future__ import annotations

from typing import Any

from django.db import connections

from django_poolguard.conf import is_guarded, pool_options
from django_poolguard.engine.pool import all_pools
from django_poolguard.fleet.leases import lease_snapshot
from django_poolguard.fleet.snapshots import CRITICAL, WARNING, pool_state, worst


def guarded_aliases() -> list[str]:
    """The aliases served by poolguard's engine with a pool, in settings order."""
    return [
        alias
        for alias, settings_dict in connections.settings.items()
        if is_guarded(settings_dict) and pool_options(settings_dict)
    ]


def health() -> dict[str, Any]:
    """``{"status": "healthy|warning|critical", "aliases": {alias: {...}}}`` for this process.

    An alias whose pool this process has not opened yet is healthy with ``"open": false``:
    nothing has failed, and finding out would mean connecting.
    """
    pools = all_pools()
    aliases: dict[str, Any] = {}
    configured = guarded_aliases()
    for alias in configured + sorted(set(pools) - set(configured)):
        pool = pools.get(alias)
        if pool is None:
            aliases[alias] = {"status": "healthy", "open": False}
            continue
        state = pool_state(pool)
        aliases[alias] = {
            "status": state["status"],
            "open": True,
            "in_use": state["in_use"],
            "idle": state["idle"],
            "waiting": state["waiting"],
            "max": state["max"],
            "utilization": state["utilization"],
        }
        lease = lease_snapshot(alias)
        if lease is not None:
            aliases[alias]["lease"] = {
                "budget": lease["budget"],
                "lease": lease["lease"],
                "members": lease["members"],
                "fallback": lease["fallback"],
            }
            if lease["fallback"] and state["status"] != CRITICAL:
                # The pool works, on a static share: the lease store needs someone's attention.
                aliases[alias]["status"] = WARNING
                aliases[alias]["reason"] = f"lease store ({lease['store']}) unreachable: static share"
    return {"status": worst([entry["status"] for entry in aliases.values()]), "aliases": aliases}


def is_critical(report: dict[str, Any]) -> bool:
    return bool(report["status"] == CRITICAL)
