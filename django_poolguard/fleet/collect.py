"""The fleet view as data: every live process's pools, totals per alias, the database's
sessions and the connection budget — the ``poolstats --json`` shape.

Readers (``poolstats``, the admin dashboard) call :func:`collect`. Everything is read
over poolguard's side connection or the cache, never a slot of a pool, because the fleet
view is most needed when the pools are exhausted. A part that cannot be read (database
down, cache unreachable) is reported under ``errors`` instead of failing the whole view,
and a published snapshot that cannot be read (see :mod:`~django_poolguard.fleet.schema`)
under ``unreadable``, while the other processes are still shown.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any, Literal, NotRequired, TypedDict, get_args

from django.conf import settings

from django_poolguard.conf import guard_settings, is_postgresql
from django_poolguard.fleet import activity, budget, publish
from django_poolguard.fleet.lease_totals import FleetLease, fleet_lease, problems
from django_poolguard.fleet.schema import (
    CRITICAL,
    HISTORY_FIELDS,
    WARNING,
    EncodedPoint,
    HistoryPoint,
    ProcessSnapshot,
    Unreadable,
    decode_history,
    encode_point,
    read_entry,
)
from django_poolguard.fleet.snapshots import worst
from django_poolguard.fleet.top import Holder, ProfileFinding, alias_profile

logger = logging.getLogger("django_poolguard")

TOP_SESSIONS = 10  # sessions listed in database.longest_sessions

#: The per-process numbers an alias's totals add up.
SummedKey = Literal[
    "size",
    "in_use",
    "idle",
    "waiting",
    "max",
    "acquired_total",
    "timeouts_total",
    "rejected_total",
    "shed_total",
    "leaks_active",
    "leaks_total",
    "reclaimed_total",
]
SUMMED: tuple[SummedKey, ...] = get_args(SummedKey)


class AliasTotals(TypedDict):
    """One alias over the fleet: the ``aliases`` values of ``poolstats --json``."""

    workload: str
    processes: int
    size: int
    in_use: int
    idle: int
    waiting: int
    max: int
    acquire_p95_ms: float
    acquired_total: int
    timeouts_total: int
    rejected_total: int
    shed_total: int
    leaks_active: int
    leaks_total: int
    reclaimed_total: int
    release: str  # the processes' release mode; "mixed" while a deploy changes it
    released_total: int
    utilization: float
    status: str
    history: NotRequired[list[EncodedPoint]]
    # The pool-time profile's keys (fleet/top.py), when any process published rows for the alias.
    top: NotRequired[list[Holder]]
    findings: NotRequired[list[ProfileFinding]]
    busy_ratio: NotRequired[float | None]
    pool_seconds: NotRequired[float]
    # The alias's fleet budget, when its processes publish a lease (fleet/lease_totals.py).
    fleet: NotRequired[FleetLease]


def default_alias() -> str:
    """``default`` when it is a PostgreSQL alias, else the first one that is."""
    candidates = [a for a, s in settings.DATABASES.items() if is_postgresql(s)]
    if "default" in candidates or not candidates:
        return "default"
    return candidates[0]


def collect(alias: str | None = None, *, history: bool = True, local_fallback: bool = True) -> dict[str, Any]:
    """The fleet view (``poolstats --json``).

    ``alias`` restricts processes and totals to one alias (and reads the database side
    from it); ``history=False`` drops the per-alias 15-minute history points. With
    ``PUBLISH=None`` or ``local_fallback``, this process's own pools are included live (in
    place of what it published), so a lone ``runserver`` sees itself, and up to date.
    """
    errors: list[dict[str, str]] = []
    unreadable: list[Unreadable] = []
    db_alias = alias if alias is not None else default_alias()
    processes = _processes(errors, unreadable, local_fallback=local_fallback, history=history)
    if alias is not None:
        processes = [
            {**p, "aliases": {alias: p["aliases"][alias]}} for p in processes if alias in p["aliases"]
        ]
    data: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(),
        "publish": guard_settings.PUBLISH,
        "history_fields": list(HISTORY_FIELDS),
        "processes": processes,
        "aliases": totals(processes, history=history),
        "database": {},
        "budget": {},
        "errors": errors,
        "unreadable": [entry.as_dict() for entry in unreadable],
    }
    server: dict[str, int] | None = None
    try:
        server = activity.server_settings(db_alias)
        data["database"] = database_side(db_alias, activity.sessions(db_alias), server)
    except Exception as exc:
        errors.append(error_entry("database", db_alias, exc))
    if server is not None:
        try:
            data["budget"] = budget.for_alias(db_alias, server=server)
        except Exception as exc:
            errors.append(error_entry("budget", db_alias, exc))
    return data


def _processes(
    errors: list[dict[str, str]], unreadable: list[Unreadable], *, local_fallback: bool, history: bool
) -> list[ProcessSnapshot]:
    mode = guard_settings.PUBLISH
    processes: list[ProcessSnapshot] = []
    if mode is not None:
        try:
            processes, skipped = publish.read_published(history=history)
            unreadable += skipped
        except Exception as exc:
            errors.append(error_entry("publish", str(mode), exc))
    if mode is None or local_fallback:
        # This process's live pools are fresher than what it published up to an interval ago.
        # Read like any other entry, so every process is shown in the one validated shape.
        snapshot = publish.current_snapshot()
        own = None if snapshot is None else read_entry(snapshot, history=history)
        if isinstance(own, Unreadable):
            unreadable.append(own)
        elif own is not None:
            own["age_s"] = 0.0
            processes = [p for p in processes if (p["host"], p["pid"]) != (own["host"], own["pid"])]
            processes.append(own)
    processes.sort(key=lambda p: (p["host"], p["pid"]))
    return processes


def totals(processes: list[ProcessSnapshot], *, history: bool = True) -> dict[str, AliasTotals]:
    """Per alias: sums over processes, the worst status, and (optionally) a fleet history."""
    out: dict[str, AliasTotals] = {}
    statuses: dict[str, list[str]] = {}
    for process in processes:
        for alias, data in process["aliases"].items():
            total = out.get(alias)
            if total is None:
                total = out[alias] = {
                    "workload": data["workload"],
                    "processes": 0,
                    "size": 0,
                    "in_use": 0,
                    "idle": 0,
                    "waiting": 0,
                    "max": 0,
                    "acquire_p95_ms": 0.0,
                    "acquired_total": 0,
                    "timeouts_total": 0,
                    "rejected_total": 0,
                    "shed_total": 0,
                    "leaks_active": 0,
                    "leaks_total": 0,
                    "reclaimed_total": 0,
                    "release": data["release"],
                    "released_total": 0,
                    "utilization": 0.0,
                    "status": data["status"],
                }
            total["processes"] += 1
            for key in SUMMED:
                total[key] += data[key]
            total["released_total"] += data["released_total"]
            if total["release"] != data["release"]:
                total["release"] = "mixed"
            total["acquire_p95_ms"] = max(total["acquire_p95_ms"], data["acquire_ms"]["p95"])
            statuses.setdefault(alias, []).append(data["status"])
    for alias, total in out.items():
        profile = alias_profile(processes, alias)  # the pool-time profile, summed over processes
        if profile is not None:
            total.update(profile)
        fleet = fleet_lease(processes, alias)
        if fleet is not None:
            total["fleet"] = fleet
        total["utilization"] = round(total["in_use"] / total["max"], 4) if total["max"] else 0.0
        # The worst process decides: one exhausted gunicorn worker is an outage for its requests.
        total["status"] = worst(statuses[alias])
        if history:
            total["history"] = fleet_history(processes, alias)
    return out


def fleet_history(processes: list[ProcessSnapshot], alias: str) -> list[EncodedPoint]:
    """The processes' history points of ``alias`` summed per 5 s step (p95: the worst)."""
    step = publish.HISTORY_STEP
    sums: dict[int, HistoryPoint] = {}
    for process in processes:
        pool = process["aliases"].get(alias)
        if pool is None:
            continue
        # The newest point of each process within a step stands for that step.
        latest = {int(p.t // step): p for p in decode_history(pool.get("history", []))}
        for bucket, p in latest.items():
            total = sums.get(bucket)
            sums[bucket] = (
                p._replace(t=round(bucket * step, 1))
                if total is None
                else HistoryPoint(
                    t=total.t,
                    in_use=total.in_use + p.in_use,
                    idle=total.idle + p.idle,
                    waiting=total.waiting + p.waiting,
                    max=total.max + p.max,
                    acquire_p95_ms=max(total.acquire_p95_ms, p.acquire_p95_ms),
                )
            )
    return [encode_point(sums[bucket]) for bucket in sorted(sums)]


def database_side(alias: str, sessions: list[dict[str, Any]], server: dict[str, int]) -> dict[str, Any]:
    """The ``database`` key: counts by state and application, oldest transaction, longest query."""
    by_state: dict[str, int] = defaultdict(int)
    by_application: dict[tuple[str, str], int] = defaultdict(int)
    for session in sessions:
        state = session["state"] or "unknown"
        by_state[state] += 1
        by_application[(session["application_name"] or "", state)] += 1
    # poolguard's own side connection is counted, but never the "oldest" or "longest" culprit.
    in_transaction = [s for s in sessions if s["transaction_s"] is not None and not s["own"]]
    running = [s for s in sessions if s["state"] == "active" and s["query_s"] is not None and not s["own"]]
    oldest = max(in_transaction, key=lambda s: s["transaction_s"], default=None)
    longest = max(running, key=lambda s: s["query_s"], default=None)
    longest_sessions = sorted((s for s in sessions if not s["own"]), key=activity.longest_first)[
        :TOP_SESSIONS
    ]
    return {
        "alias": alias,
        "max_connections": server["max_connections"],
        "superuser_reserved_connections": server["superuser_reserved_connections"],
        "server_connections": server["server_connections"],
        "connections": len(sessions),
        "by_state": dict(sorted(by_state.items())),
        "by_application": [
            {"application_name": name, "state": state, "count": count}
            for (name, state), count in sorted(by_application.items(), key=lambda item: (-item[1], item[0]))
        ],
        "oldest_transaction": _session_summary(oldest),
        "longest_query": _session_summary(longest),
        "longest_sessions": [_session_summary(s) for s in longest_sessions],
    }


def _session_summary(session: dict[str, Any] | None) -> dict[str, Any] | None:
    if session is None:
        return None
    keys = (
        "pid",
        "user",
        "application_name",
        "workload",
        "state",
        "transaction_s",
        "query_s",
        "wait_event_type",
        "wait_event",
        "query",
        "superuser",
    )
    return {key: session[key] for key in keys}


def error_entry(part: str, where: str, exc: Exception) -> dict[str, str]:
    # psycopg error messages name host/database/user but never the password.
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return {"part": part, "where": where, "error": f"{type(exc).__name__}: {message}"}


def status(data: dict[str, Any]) -> str:
    """healthy / warning / critical for ``poolstats --check``.

    The worst alias status across processes; critical when the database side cannot be
    read (it is unreachable); warning when the budget is over, or the published snapshots
    cannot be read, or one of them is unreadable (the view then misses a process).
    """
    statuses = [total["status"] for total in data.get("aliases", {}).values()]
    parts = {error["part"] for error in data.get("errors", [])}
    if "database" in parts:
        statuses.append(CRITICAL)
    if "publish" in parts or data.get("unreadable"):
        statuses.append(WARNING)
    if data.get("budget", {}).get("status") == budget.OVER:
        statuses.append(WARNING)
    if lease_problems(data):
        statuses.append(WARNING)
    return worst(statuses)


def lease_problems(data: dict[str, Any]) -> list[str]:
    """The fleet budgets' warnings (leases over a budget, processes on the static share), one line each."""
    return [
        line
        for alias, total in data.get("aliases", {}).items()
        if "fleet" in total
        for line in problems(alias, total["fleet"])
    ]


__all__ = ["collect", "status", "totals"]
