"""What the admin's "Connection pools" page shows, as template-ready data.

The numbers come from the fleet view (:func:`django_poolguard.fleet.collect.collect`, the
``poolstats --json`` shape, where this process's own entry is live rather than its last
published snapshot), and the sessions from
:mod:`django_poolguard.fleet.activity`. This module only arranges them: one card per alias, the
per-process table, the current checkouts longest first, the sessions longest first, and
the history sparkline as inline SVG (no chart library).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from django.db import connections

from django_poolguard.conf import hostname, is_guarded
from django_poolguard.engine.priority import PRIORITY_CLASSES
from django_poolguard.escaping import escape_controls
from django_poolguard.fleet.activity import longest_first, session_age, sessions
from django_poolguard.fleet.collect import AliasTotals, collect, totals
from django_poolguard.fleet.lease_totals import FleetLease
from django_poolguard.fleet.schema import (
    AliasSnapshot,
    EncodedPoint,
    HistoryPoint,
    Percentiles,
    ProcessSnapshot,
    Unreadable,
    decode_history,
    unreadable_count,
)
from django_poolguard.fleet.snapshots import worst
from django_poolguard.watchdog.leaks import suspected_leak

logger = logging.getLogger("django_poolguard")

MAX_SESSIONS = 100  # rows in the sessions table; the rest are counted
# Rows in the checkouts table, longest held first; each carries its stack, so the rest are only counted.
MAX_CHECKOUTS = 50
SPARK_WIDTH, SPARK_HEIGHT = 300, 60  # the sparkline's viewBox; it scales to the card's width
HISTORY_SECONDS = 15 * 60
MAX_CAPPED_REASONS = 5  # distinct "capped at ..." texts per card; a rebalance shows two or three
MIN_SPAN = 60.0  # s: the shortest time axis a sparkline gets


def fleet_data() -> dict[str, Any]:
    """The fleet (``poolstats --json`` shape); this process's own entry is live, not as last published."""
    fleet = collect()
    me = (hostname(), os.getpid())
    for process in fleet["processes"]:
        process["live"] = (process["host"], process["pid"]) == me
    return fleet


def _points(history: list[EncodedPoint], now: float) -> list[HistoryPoint]:
    """The fleet's history points of the last 15 minutes."""
    return [point for point in decode_history(history) if point.t >= now - HISTORY_SECONDS]


def sparkline(history: list[HistoryPoint], now: float) -> dict[str, Any] | None:
    """SVG points for in use (line and area), waiting and max, or None without history.

    The x axis spans the history there is, from one minute up to the last 15, ending now,
    so a pool opened two minutes ago gets a readable line rather than a dot at the edge.
    """
    if not history:
        return None
    span = min(HISTORY_SECONDS, max(MIN_SPAN, now - history[0].t))
    start = now - span
    top = max(max(s.max, s.in_use + s.waiting) for s in history) or 1.0

    def xy(s: HistoryPoint, value: float) -> tuple[float, float]:
        x = max(0.0, min((s.t - start) / span * SPARK_WIDTH, SPARK_WIDTH))
        return x, SPARK_HEIGHT - 1 - value / top * (SPARK_HEIGHT - 2)

    def points(line: Callable[[HistoryPoint], float]) -> str:
        return " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(s, line(s)) for s in history))

    in_use = points(lambda s: s.in_use)
    first_x, _ = xy(history[0], history[0].in_use)
    last_x, last_y = xy(history[-1], history[-1].in_use)
    return {
        "width": SPARK_WIDTH,
        "height": SPARK_HEIGHT,
        "minutes": max(1, round(span / 60)),
        "in_use": in_use,
        "area": f"{first_x:.1f},{SPARK_HEIGHT} {in_use} {last_x:.1f},{SPARK_HEIGHT}",
        "last": {"x": f"{last_x:.1f}", "y": f"{last_y:.1f}"},
        "waiting": points(lambda s: s.waiting) if any(s.waiting for s in history) else "",
        "max": points(lambda s: s.max),
        "samples": len(history),
        "peak_in_use": int(max(s.in_use for s in history)),
        "peak_waiting": int(max(s.waiting for s in history)),
        "peak_p95": max(s.acquire_p95_ms for s in history),
    }


def _alias_cards(
    processes: list[ProcessSnapshot], totals: dict[str, AliasTotals], now: float
) -> list[dict[str, Any]]:
    """One card per alias from the fleet's per-alias totals, plus the worst process's acquire
    p50/p99 (the totals carry only p95) and the sparkline."""
    cards = []
    for alias, total in sorted(totals.items()):
        datas = [p["aliases"][alias] for p in processes if alias in p["aliases"]]
        acquire: Percentiles = {
            "p50": max((d["acquire_ms"]["p50"] for d in datas), default=0.0),
            "p95": max((d["acquire_ms"]["p95"] for d in datas), default=0.0),
            "p99": max((d["acquire_ms"]["p99"] for d in datas), default=0.0),
        }
        history = _points(total.get("history", []), now)
        # History points are per 5 s step; the line ends at the numbers shown above it.
        history.append(
            HistoryPoint(
                t=now,
                in_use=total["in_use"],
                idle=total["idle"],
                waiting=total["waiting"],
                max=total["max"],
                acquire_p95_ms=acquire["p95"],
            )
        )
        cards.append(
            {
                **total,
                "alias": alias,
                "utilization_pct": round(100 * total["in_use"] / total["max"]) if total["max"] else 0,
                "acquire_ms": acquire,
                "sparkline": sparkline(history, now),
                "priorities": _priority_rows(datas),
                # The pool-time profile summed over processes (fleet/top.py); None when not published.
                "top": total.get("top"),
                "findings": total.get("findings") or [],
                "busy_ratio": total.get("busy_ratio"),
                "fleet": _fleet_budget(total.get("fleet")),
            }
        )
    return cards


def _fleet_budget(fleet: FleetLease | None) -> dict[str, Any] | None:
    """The card's fleet budget: leased of budget, the fair share, why pools are capped (each
    distinct reason once, with how many processes gave it), and the processes on the static share."""
    if fleet is None:
        return None
    reasons: dict[str, int] = {}
    for process in fleet["capped"]:
        # Another process's text: a bidi override would reorder what the page shows around it.
        text = escape_controls(process["capped"])
        reasons[text] = reasons.get(text, 0) + 1
    ranked = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
    return {
        **fleet,
        "leased_pct": min(100, round(100 * fleet["leased"] / fleet["budget"])) if fleet["budget"] else 0,
        "capped_reasons": [{"text": text, "processes": n} for text, n in ranked[:MAX_CAPPED_REASONS]],
        "more_capped_reasons": max(0, len(ranked) - MAX_CAPPED_REASONS),
    }


def _priority_rows(datas: list[AliasSnapshot]) -> list[dict[str, Any]]:
    """Per priority class over the processes: counts summed, the worst process's acquire times."""
    entries = [d["priorities"] for d in datas if "priorities" in d]
    if not entries:
        return []
    names = [name for name in PRIORITY_CLASSES if any(name in e for e in entries)]
    names += sorted({name for e in entries for name in e} - set(names))  # a newer release's classes
    rows = []
    for name in names:
        classes = [e[name] for e in entries if name in e]
        rows.append(
            {
                "name": name,
                "acquired_total": sum(c["acquired_total"] for c in classes),
                "refused_total": sum(c["refused_total"] for c in classes),
                "shed_total": sum(c["shed_total"] for c in classes),
                "acquire_p50_ms": max(c["acquire_ms"]["p50"] for c in classes),
                "acquire_p99_ms": max(c["acquire_ms"]["p99"] for c in classes),
            }
        )
    return rows


def _process_rows(processes: list[ProcessSnapshot]) -> list[dict[str, Any]]:
    rows = []
    for process in sorted(processes, key=lambda p: (p["host"], p["pid"])):
        for alias, data in sorted(process["aliases"].items()):
            rows.append(
                {
                    "host": process["host"],
                    "pid": process["pid"],
                    "role": process["role"],
                    "age_s": process.get("age_s"),
                    "live": process.get("live", False),
                    "alias": alias,
                    "status": data["status"],
                    "in_use": data["in_use"],
                    "idle": data["idle"],
                    "waiting": data["waiting"],
                    "max": data["max"],
                    "lease": _row_lease(data),
                    "p95": data["acquire_ms"]["p95"],
                    "leaks_active": data["leaks_active"],
                    "timeouts_total": data["timeouts_total"],
                }
            )
    return rows


def _row_lease(data: AliasSnapshot) -> dict[str, Any] | None:
    lease = data.get("lease")
    if lease is None:
        return None
    return {**lease, "capped": None if lease["capped"] is None else escape_controls(lease["capped"])}


def _checkouts(processes: list[ProcessSnapshot]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for process in processes:
        for alias, data in process["aliases"].items():
            threshold = data["leak_threshold"]
            for checkout in data.get("checkouts", []):
                held = checkout["held_s"]
                rows.append(
                    {
                        **checkout,
                        "alias": alias,
                        "host": process["host"],
                        "pid": process["pid"],
                        # Entries published without a leak_threshold read as 0: no verdict for them.
                        "suspected_leak": bool(threshold) and suspected_leak(held, threshold),
                        # Outside a request, task or command the context is just the thread's name.
                        "context": ""
                        if checkout["context"] == f"thread {checkout['thread']}"
                        else checkout["context"],
                    }
                )
    rows.sort(key=lambda c: c["held_s"], reverse=True)
    return rows


def session_databases() -> list[str]:
    """One poolguard alias per distinct database (host, port, name), in settings order."""
    seen: dict[tuple[Any, ...], str] = {}
    for alias, settings_dict in connections.settings.items():
        if not is_guarded(settings_dict):
            continue
        key = (settings_dict.get("HOST"), settings_dict.get("PORT"), settings_dict.get("NAME"))
        seen.setdefault(key, alias)
    return list(seen.values())


def _sessions() -> list[dict[str, Any]]:
    import psycopg

    groups = []
    for alias in session_databases():
        try:
            rows = sessions(alias)
        except psycopg.Error as exc:
            logger.warning("The dashboard could not list the sessions of alias %r: %s", alias, exc)
            groups.append({"alias": alias, "sessions": [], "error": type(exc).__name__, "more": 0})
            continue
        rows = [row for row in rows if not row["own"]]  # this page's own query: noise
        for row in rows:
            row["age_s"] = session_age(row)
            row["busy"] = row["state"] not in (None, "idle")
        rows.sort(key=longest_first)
        groups.append(
            {
                "alias": alias,
                "sessions": rows[:MAX_SESSIONS],
                "error": None,
                "more": max(0, len(rows) - MAX_SESSIONS),
            }
        )
    return groups


def build(fleet: dict[str, Any] | None = None, *, with_sessions: bool = True) -> dict[str, Any]:
    """The dashboard's template context: cards, processes, checkouts, sessions, database, budget."""
    fleet = fleet_data() if fleet is None else fleet
    now = datetime.now(UTC).timestamp()
    processes = list(fleet.get("processes") or [])
    if "aliases" not in fleet:  # a fleet given without its totals (tests, callers of build())
        fleet = {**fleet, "aliases": totals(processes)}
    cards = _alias_cards(processes, fleet["aliases"], now)
    checkouts = _checkouts(processes)
    return {
        "generated_at": fleet.get("generated_at") or datetime.now(UTC).isoformat(),
        "generated": datetime.fromtimestamp(now, UTC),
        "status": worst([c["status"] for c in cards]),
        "cards": cards,
        "process_rows": _process_rows(processes),
        "process_count": len(processes),
        "checkouts": checkouts[:MAX_CHECKOUTS],
        "more_checkouts": max(0, len(checkouts) - MAX_CHECKOUTS),
        "session_groups": _sessions() if with_sessions else [],
        "database": fleet.get("database") or {},
        "budget": fleet.get("budget") or {},
        "errors": fleet.get("errors") or [],
        "unreadable": _unreadable(fleet.get("unreadable") or []),
    }


def _unreadable(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The notice about skipped snapshots: how many, and each one's host, pid and reason."""
    if not entries:
        return None
    return {"summary": unreadable_count(entries), "entries": [Unreadable(**e).describe() for e in entries]}
