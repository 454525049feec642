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
from datetime import UTC, datetime
from typing import Any

from django.db import connections

from django_poolguard.conf import hostname
from django_poolguard.fleet.snapshots import HEALTHY, worst

logger = logging.getLogger("django_poolguard")

MAX_SESSIONS = 100  # rows in the sessions table; the rest are counted
# Rows in the checkouts table, longest held first; each carries its stack, so the rest are only counted.
MAX_CHECKOUTS = 50
SPARK_WIDTH, SPARK_HEIGHT = 300, 60  # the sparkline's viewBox; it scales to the card's width
HISTORY_SECONDS = 15 * 60
MIN_SPAN = 60.0  # s: the shortest time axis a sparkline gets


def fleet_data() -> dict[str, Any]:
    """The fleet (``poolstats --json`` shape); this process's own entry is live, not as last published."""
    from django_poolguard.fleet.collect import collect

    fleet = collect()
    me = (hostname(), os.getpid())
    for process in fleet["processes"]:
        process["live"] = (process.get("host"), process.get("pid")) == me
    return fleet


def _points(history: list[Any], now: float) -> list[dict[str, float]]:
    """The fleet's history points (lists in ``publish.HISTORY_FIELDS`` order) of the last
    15 minutes, as dicts with t, in_use, waiting, max and p95."""
    from django_poolguard.fleet.publish import HISTORY_FIELDS

    out = []
    for values in history or []:
        point = {field: float(value or 0.0) for field, value in zip(HISTORY_FIELDS, values, strict=False)}
        if point.get("t", 0.0) >= now - HISTORY_SECONDS:
            out.append(
                {
                    "t": point["t"],
                    "in_use": point.get("in_use", 0.0),
                    "waiting": point.get("waiting", 0.0),
                    "max": point.get("max", 0.0),
                    "p95": point.get("acquire_p95_ms", 0.0),
                }
            )
    return out


def sparkline(history: list[dict[str, float]], now: float) -> dict[str, Any] | None:
    """SVG points for in use (line and area), waiting and max, or None without history.

    The x axis spans the history there is, from one minute up to the last 15, ending now,
    so a pool opened two minutes ago gets a readable line rather than a dot at the edge.
    """
    if not history:
        return None
    span = min(HISTORY_SECONDS, max(MIN_SPAN, now - history[0]["t"]))
    start = now - span
    top = max(max(s["max"], s["in_use"] + s["waiting"]) for s in history) or 1.0

    def xy(s: dict[str, float], key: str) -> tuple[float, float]:
        x = max(0.0, min((s["t"] - start) / span * SPARK_WIDTH, SPARK_WIDTH))
        return x, SPARK_HEIGHT - 1 - s[key] / top * (SPARK_HEIGHT - 2)

    def points(key: str) -> str:
        return " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(s, key) for s in history))

    in_use = points("in_use")
    first_x, _ = xy(history[0], "in_use")
    last_x, last_y = xy(history[-1], "in_use")
    return {
        "width": SPARK_WIDTH,
        "height": SPARK_HEIGHT,
        "minutes": max(1, round(span / 60)),
        "in_use": in_use,
        "area": f"{first_x:.1f},{SPARK_HEIGHT} {in_use} {last_x:.1f},{SPARK_HEIGHT}",
        "last": {"x": f"{last_x:.1f}", "y": f"{last_y:.1f}"},
        "waiting": points("waiting") if any(s["waiting"] for s in history) else "",
        "max": points("max"),
        "samples": len(history),
        "peak_in_use": int(max(s["in_use"] for s in history)),
        "peak_waiting": int(max(s["waiting"] for s in history)),
        "peak_p95": max(s["p95"] for s in history),
    }


def _alias_cards(processes: list[dict[str, Any]], totals: dict[str, Any], now: float) -> list[dict[str, Any]]:
    """One card per alias from the fleet's per-alias totals, plus the worst process's acquire
    p50/p99 (the totals carry only p95) and the sparkline."""
    cards = []
    for alias, total in sorted(totals.items()):
        datas = [p["aliases"][alias] for p in processes if alias in (p.get("aliases") or {})]
        acquire = {
            p: max((float((d.get("acquire_ms") or {}).get(p, 0.0)) for d in datas), default=0.0)
            for p in ("p50", "p95", "p99")
        }
        history = _points(total.get("history") or [], now)
        # History points are per 5 s step; the line ends at the numbers shown above it.
        history.append(
            {
                "t": now,
                "in_use": total["in_use"],
                "waiting": total["waiting"],
                "max": total["max"],
                "p95": acquire["p95"],
            }
        )
        cards.append(
            {
                **total,
                "alias": alias,
                "workload": total.get("workload") or "",
                "utilization_pct": round(100 * total["in_use"] / total["max"]) if total["max"] else 0,
                "acquire_ms": acquire,
                "sparkline": sparkline(history, now),
                # The pool-time profile summed over processes (fleet/top.py); None when not published.
                "top": total.get("top"),
                "findings": total.get("findings") or [],
                "busy_ratio": total.get("busy_ratio"),
            }
        )
    return cards


def _process_rows(processes: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    rows = []
    for process in sorted(processes, key=lambda p: (str(p.get("host")), int(p.get("pid", 0)))):
        for alias, data in sorted((process.get("aliases") or {}).items()):
            rows.append(
                {
                    "host": process.get("host", ""),
                    "pid": process.get("pid", ""),
                    "role": process.get("role", ""),
                    "age_s": process.get("age_s"),
                    "live": bool(process.get("live")),
                    "alias": alias,
                    "status": data.get("status", HEALTHY),
                    "in_use": data.get("in_use", 0),
                    "idle": data.get("idle", 0),
                    "waiting": data.get("waiting", 0),
                    "max": data.get("max", 0),
                    "p95": (data.get("acquire_ms") or {}).get("p95", 0.0),
                    "leaks_active": data.get("leaks_active", 0),
                    "timeouts_total": data.get("timeouts_total", 0),
                }
            )
    return rows


def _checkouts(processes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for process in processes:
        for alias, data in (process.get("aliases") or {}).items():
            threshold = float(data.get("leak_threshold") or 0.0)
            for checkout in data.get("checkouts") or []:
                held = float(checkout.get("held_s", 0.0))
                rows.append(
                    {
                        **checkout,
                        "alias": alias,
                        "host": process.get("host", ""),
                        "pid": process.get("pid", ""),
                        "held_s": held,
                        "suspected_leak": bool(threshold and held >= threshold),
                        # Outside a request, task or command the context is just the thread's name.
                        "context": ""
                        if checkout.get("context") == f"thread {checkout.get('thread')}"
                        else checkout.get("context"),
                        "stack": list(checkout.get("stack") or []),
                    }
                )
    rows.sort(key=lambda c: c["held_s"], reverse=True)
    return rows


def session_databases() -> list[str]:
    """One poolguard alias per distinct database (host, port, name), in settings order."""
    seen: dict[tuple[Any, ...], str] = {}
    for alias, settings_dict in connections.settings.items():
        if not str(settings_dict.get("ENGINE", "")).startswith("django_poolguard."):
            continue
        key = (settings_dict.get("HOST"), settings_dict.get("PORT"), settings_dict.get("NAME"))
        seen.setdefault(key, alias)
    return list(seen.values())


def session_age(session: dict[str, Any]) -> float:
    """How long a session has been doing what it does: the transaction, else the running
    query, else the idle time; the figure "longest first" sorts by."""
    keys: tuple[str, ...] = ("transaction_s", "query_s", "state_s", "connected_s")
    if session["state"] == "idle":
        keys = ("state_s", "connected_s")
    for key in keys:
        if session.get(key) is not None:
            return float(session[key])
    return 0.0


def _sessions() -> list[dict[str, Any]]:
    import psycopg

    from django_poolguard.fleet.activity import sessions

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
        # Busy sessions first (they hold something), each group longest first.
        rows.sort(key=lambda r: (not r["busy"], -r["age_s"]))
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
        from django_poolguard.fleet.collect import totals

        fleet = {**fleet, "aliases": totals(processes)}
    cards = _alias_cards(processes, fleet["aliases"], now)
    checkouts = _checkouts(processes)
    return {
        "generated_at": fleet.get("generated_at") or datetime.now(UTC).isoformat(),
        "generated": datetime.fromtimestamp(now, UTC),
        "status": worst([c["status"] for c in cards]),
        "cards": cards,
        "process_rows": _process_rows(processes, now),
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
    from django_poolguard.fleet.schema import Unreadable, unreadable_count

    if not entries:
        return None
    return {"summary": unreadable_count(entries), "entries": [Unreadable(**e).describe() for e in entries]}
