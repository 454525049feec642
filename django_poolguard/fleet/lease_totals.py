"""An alias's fleet budget as the fleet view shows it: every live process's lease added up.

Each process publishes its own view of its lease (:class:`~django_poolguard.fleet.schema.LeaseSnapshot`):
its lease, the budget, and what the lease store told it at its last heartbeat (``members``,
``fleet_held``). Those views are up to a heartbeat old and may disagree during a scale-out; the
fleet line (``poolstats``, the admin's cards, ``--check``) is therefore computed here from the
processes the view itself lists: the sum of their leases against the budget; the fair share
divides the budget by those processes, or by the members the store counted when that is more
(a member publishing nowhere, or skipped as unreadable, still holds a lease).
"""

from __future__ import annotations

from typing import TypedDict

from django_poolguard.fleet.schema import LeaseSnapshot, ProcessSnapshot


class CappedProcess(TypedDict):
    """A process whose pool runs below its max_size, and the reason it gave."""

    host: str
    pid: int
    max: int  # the pool's configured max_size
    lease: int
    capped: str


class FleetLease(TypedDict):
    """One budgeted alias over the fleet: the ``aliases.<alias>.fleet`` value of ``poolstats --json``."""

    budget: int  # the budget the processes report (the largest, while a deploy changes it)
    budgets: list[int]  # every distinct budget reported: more than one while a deploy changes it
    leased: int  # the sum of the live processes' leases
    processes: int  # live processes holding a lease of the alias, in this view
    members: int  # live members of the budget by the store's count: the largest any process reports
    share: int  # the fair share: budget // the larger of processes and members
    over: bool  # leased > budget: published views overlap (a heartbeat apart), or something is wrong
    stores: list[str]  # "database", "cache"
    fallback: list[str]  # "host:pid" of the processes on the static share (their store is unreachable)
    capped: list[CappedProcess]


def fleet_lease(processes: list[ProcessSnapshot], alias: str) -> FleetLease | None:
    """``alias``'s fleet budget over ``processes``, or ``None`` when none of them publishes a lease."""
    leases: list[tuple[ProcessSnapshot, LeaseSnapshot, int]] = []
    for process in processes:
        pool = process["aliases"].get(alias)
        if pool is not None and "lease" in pool:
            leases.append((process, pool["lease"], pool["lease"].get("max_size", pool["max"])))
    if not leases:
        return None
    budgets = sorted({lease["budget"] for _, lease, _ in leases})
    budget = budgets[-1]
    leased = sum(lease["lease"] for _, lease, _ in leases)
    # The store counts members the view may not list (a process publishing nowhere, or unreadable).
    members = max(lease["members"] for _, lease, _ in leases)
    return {
        "budget": budget,
        "budgets": budgets,
        "leased": leased,
        "processes": len(leases),
        "members": members,
        "share": budget // max(len(leases), members, 1),
        "over": leased > budget,
        "stores": sorted({lease["store"] for _, lease, _ in leases}),
        "fallback": [f"{p['host']}:{p['pid']}" for p, lease, _ in leases if lease["fallback"]],
        "capped": [
            {
                "host": p["host"],
                "pid": p["pid"],
                "max": size,
                "lease": lease["lease"],
                "capped": lease["capped"],
            }
            for p, lease, size in leases
            if lease["capped"]
        ],
    }


def describe(alias: str, workload: str, fleet: FleetLease) -> str:
    """``fleet budget of default (workload web): 118 of 120 leased by 30 processes (fair share 4)``"""
    label = alias if not workload or workload == alias else f"{alias} (workload {workload})"
    processes = f"{fleet['processes']} process{'' if fleet['processes'] == 1 else 'es'}"
    line = f"fleet budget of {label}: {fleet['leased']} of {fleet['budget']} leased by {processes} (fair share {fleet['share']})"
    if fleet["over"]:
        line += f", {fleet['leased'] - fleet['budget']} OVER the budget"
    if fleet["members"] > fleet["processes"]:
        unseen = fleet["members"] - fleet["processes"]
        line += f"; the lease store counts {fleet['members']} members, {unseen} not in this view"
    if len(fleet["budgets"]) > 1:
        line += f"; the processes disagree on the budget ({', '.join(map(str, fleet['budgets']))}): a deploy is changing it"
    if fleet["fallback"]:
        line += f"; {len(fleet['fallback'])} on the static share (lease store unreachable)"
    return line


def problems(alias: str, fleet: FleetLease) -> list[str]:
    """What makes ``poolstats --check`` warn about the alias's budget: leases over it, or a fallback."""
    found = []
    if fleet["over"]:
        found.append(f"{alias}: {fleet['leased']} of fleet budget {fleet['budget']} leased")
    if fleet["fallback"]:
        count = len(fleet["fallback"])
        found.append(
            f"{alias}: {count} process{'' if count == 1 else 'es'} on the static share, lease store unreachable"
            f" ({', '.join(fleet['fallback'][:3])}{', ...' if count > 3 else ''})"
        )
    return found


__all__ = ["CappedProcess", "FleetLease", "describe", "fleet_lease", "problems"]
