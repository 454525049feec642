"""Seed 001 replayed through poolguard's budget: 8 → 24 pods with the same pool size per pod.

Nothing is opened: the point of the budget is to say it *before* the fleet opens 288 connections.
Django's own pool has no budget; it learns at runtime, from PostgreSQL's
``FATAL: sorry, too many clients already``.
"""

from __future__ import annotations

from typing import Any

from django_poolguard.fleet.budget import OVER, Workload, compute, describe

# The seed's numbers: max_connections 300, one Node-like process per pod, a pool of 12 per pod.
MAX_CONNECTIONS = 300
SUPERUSER_RESERVED = 3  # PostgreSQL's default superuser_reserved_connections
RESERVED = 10  # POOLGUARD["RESERVED_CONNECTIONS"], the default
POOL_PER_POD = 12
WORKERS = Workload("worker", instances=4, processes=2, pools={"worker": 3})  # the Celery fleet


def budget_for(pods: int) -> dict[str, Any]:
    web = Workload("web", instances=pods, processes=1, pools={"default": POOL_PER_POD})
    return compute(
        max_connections=MAX_CONNECTIONS,
        superuser_reserved=SUPERUSER_RESERVED,
        reserved=RESERVED,
        workloads=[web, WORKERS],
    )


def replay() -> dict[str, Any]:
    rows = []
    lines = ["", "== autoscale (seed 001: 8 -> 24 pods, pool size per pod unchanged)"]
    for pods in (8, 24):
        budget = budget_for(pods)
        web = budget["workloads"]["web"]
        verdict = "E001: the deploy fails its system check" if budget["status"] == OVER else budget["status"]
        rows.append(
            {
                "pods": pods,
                "planned": budget["planned"],
                "ceiling": budget["ceiling"],
                "status": budget["status"],
                "safe_max_size": web["safe_max_size"],
            }
        )
        lines.append(
            f"   {pods} pods: {describe(budget)} -> {verdict}; largest safe web max_size {web['safe_max_size']}"
        )
    lines += [
        "   Django's own pool: no budget and no check; at 24 pods under load PostgreSQL answers",
        "   'FATAL: sorry, too many clients already' to whichever process connects last.",
        "   poolguard: `manage.py poolbudget` and `check --database default` (E001/W001) say it before the",
        "   deploy, with the max_size that fits; set POOLGUARD['DEPLOYMENT'] to the maximum autoscale shape.",
        "",
        "| pods | fleet can open | available | poolguard verdict | largest safe max_size per pod |",
        "|---|---|---|---|---|",
        *(
            f"| {r['pods']} | {r['planned']} | {r['ceiling']} | {r['status']} | {r['safe_max_size']} |"
            for r in rows
        ),
    ]
    return {"scenario": "autoscale", "rows": rows, "text": "\n".join(lines)}
