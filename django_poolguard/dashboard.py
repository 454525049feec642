"""What the admin's "Connection pools" page shows, as template-ready data.

The numbers come from the fleet view (:func:`django_poolguard.fleet.collect`, the
``poolstats --json`` shape) and the sessions from :mod:`django_poolguard.sessions`; this
module only arranges them: one card per alias, the per-process table, the current
checkouts longest first, and the history sparkline as inline SVG (no chart library).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from django.db import connections

from .snapshots import HEALTHY, worst

logger = logging.getLogger("django_poolguard")

SPARK_WIDTH, SPARK_HEIGHT = 300, 60  # the sparkline's viewBox; it scales to the card's width
HISTORY_SECONDS = 15 * 60
HISTORY_BUCKET = 15.0  # s: processes publish at different moments; their samples are summed per bucket


def fleet_data() -> dict[str, Any]:
    """The fleet, in the ``poolstats --json`` shape."""
    try:
        from .fleet import collect
    except ImportError:  # ADAPTER until issue 4's fleet.collect is merged: this process only.
        from .snapshots import process_snapshot

        return {"generated_at": datetime.now(UTC).isoformat(), "processes": [process_snapshot()]}
    return collect()


def _timestamp(value: Any) -> float | None:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            return None
    if isinstance(value, datetime):
        return value.timestamp()
    return None


def _p95(sample: dict[str, Any]) -> float:
    for key in ("acquire_p95_ms", "p95_ms", "acquire_p95", "p95"):
        if key in sample:
            return float(sample[key] or 0.0)
    acquire = sample.get("acquire_ms")
    return float(acquire.get("p95", 0.0)) if isinstance(acquire, dict) else 0.0


def merge_history(histories: list[list[dict[str, Any]]], now: float) -> list[dict[str, float]]:
    """Sum the processes' histories of one alias per time bucket (the last sample of each
    process in each bucket), keeping the last 15 minutes."""
    buckets: dict[int, dict[int, dict[str, Any]]] = {}
    for index, history in enumerate(histories):
        for sample in history or []:
            t = _timestamp(sample.get("t"))
            if t is None or t < now - HISTORY_SECONDS:
                continue
            buckets.setdefault(int(t // HISTORY_BUCKET), {})[index] = {**sample, "t": t}
    merged = []
    for bucket in sorted(buckets):
        samples = buckets[bucket].values()
        merged.append(
            {
                "t": max(s["t"] for s in samples),
                "in_use": sum(float(s.get("in_use", 0)) for s in samples),
                "waiting": sum(float(s.get("waiting", 0)) for s in samples),
                "max": sum(float(s.get("max", 0)) for s in samples),
                "p95": max(_p95(s) for s in samples),
            }
        )
    return merged


def sparkline(history: list[dict[str, float]], now: float) -> dict[str, Any] | None:
    """Polyline points for in use, waiting and max over the last 15 minutes, or None."""
    if not history:
        return None
    top = max(max(s["max"], s["in_use"] + s["waiting"]) for s in history) or 1.0
    start = now - HISTORY_SECONDS

    def points(key: str) -> str:
        coords = []
        for s in history:
            x = (s["t"] - start) / HISTORY_SECONDS * SPARK_WIDTH
            y = SPARK_HEIGHT - s[key] / top * (SPARK_HEIGHT - 2) - 1
            coords.append(f"{max(0.0, min(x, SPARK_WIDTH)):.1f},{y:.1f}")
        if len(coords) == 1:  # one sample: a short flat segment, so it is visible at all
            x, y = coords[0].split(",")
            coords.insert(0, f"{max(0.0, float(x) - 4):.1f},{y}")
        return " ".join(coords)

    in_use = [s["in_use"] for s in history]
    return {
        "width": SPARK_WIDTH,
        "height": SPARK_HEIGHT,
        "in_use": points("in_use"),
        "waiting": points("waiting") if any(s["waiting"] for s in history) else "",
        "max": points("max"),
        "samples": len(history),
        "peak_in_use": int(max(in_use)),
        "peak_waiting": int(max(s["waiting"] for s in history)),
        "peak_p95": max(s["p95"] for s in history),
    }


def _alias_cards(processes: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    by_alias: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for process in processes:
        for alias, data in (process.get("aliases") or {}).items():
            by_alias.setdefault(alias, []).append((process, data))
    cards = []
    for alias, entries in sorted(by_alias.items()):
        datas = [data for _, data in entries]
        total = {
            key: sum(int(d.get(key, 0) or 0) for d in datas) for key in ("in_use", "idle", "waiting", "max")
        }
        acquire = {
            p: max(float((d.get("acquire_ms") or {}).get(p, 0.0)) for d in datas)
            for p in ("p50", "p95", "p99")
        }
        history = merge_history([d.get("history") or [] for d in datas], now)
        cards.append(
            {
                "alias": alias,
                "workload": ", ".join(sorted({str(d.get("workload", "")) for d in datas})),
                **total,
                "utilization_pct": round(100 * total["in_use"] / total["max"]) if total["max"] else 0,
                "status": worst([str(d.get("status", HEALTHY)) for d in datas]),
                "acquire_ms": acquire,
                "processes": len(entries),
                "acquired_total": sum(int(d.get("acquired_total", 0) or 0) for d in datas),
                "timeouts_total": sum(int(d.get("timeouts_total", 0) or 0) for d in datas),
                "shed_total": sum(int(d.get("shed_total", 0) or 0) for d in datas),
                "leaks_active": sum(int(d.get("leaks_active", 0) or 0) for d in datas),
                "leaks_total": sum(int(d.get("leaks_total", 0) or 0) for d in datas),
                "reclaimed_total": sum(int(d.get("reclaimed_total", 0) or 0) for d in datas),
                "sparkline": sparkline(history, now),
            }
        )
    return cards


def _process_rows(processes: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    rows = []
    for process in sorted(processes, key=lambda p: (str(p.get("host")), int(p.get("pid", 0)))):
        updated = _timestamp(process.get("updated_at"))
        for alias, data in sorted((process.get("aliases") or {}).items()):
            rows.append(
                {
                    "host": process.get("host", ""),
                    "pid": process.get("pid", ""),
                    "role": process.get("role", ""),
                    "age_s": round(now - updated, 1) if updated else None,
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


def _sessions() -> list[dict[str, Any]]:
    import psycopg

    from .sessions import list_sessions

    groups = []
    for alias in session_databases():
        try:
            groups.append({"alias": alias, "sessions": list_sessions(alias), "error": None})
        except psycopg.Error as exc:
            logger.warning("The dashboard could not list the sessions of alias %r: %s", alias, exc)
            groups.append({"alias": alias, "sessions": [], "error": type(exc).__name__})
    return groups


def build(fleet: dict[str, Any] | None = None, *, with_sessions: bool = True) -> dict[str, Any]:
    """The dashboard's template context: cards, processes, checkouts, sessions, database, budget."""
    fleet = fleet_data() if fleet is None else fleet
    now = datetime.now(UTC).timestamp()
    processes = list(fleet.get("processes") or [])
    cards = _alias_cards(processes, now)
    return {
        "generated_at": fleet.get("generated_at") or datetime.now(UTC).isoformat(),
        "status": worst([c["status"] for c in cards]),
        "cards": cards,
        "process_rows": _process_rows(processes, now),
        "process_count": len(processes),
        "checkouts": _checkouts(processes),
        "session_groups": _sessions() if with_sessions else [],
        "database": fleet.get("database") or {},
        "budget": fleet.get("budget") or {},
    }
