"""``manage.py poolstats``: the fleet view of every process's pools, the database and the budget."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from typing import Any

import psycopg
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from django_poolguard.engine.side_connection import side_cursor
from django_poolguard.escaping import escape_controls
from django_poolguard.fleet import collect
from django_poolguard.fleet.budget import describe
from django_poolguard.fleet.collect import AliasTotals, lease_problems
from django_poolguard.fleet.lease_totals import describe as describe_fleet
from django_poolguard.fleet.schema import (
    AliasSnapshot,
    CheckoutSnapshot,
    ProcessSnapshot,
    Unreadable,
    unreadable_count,
    unreadable_line,
)
from django_poolguard.management.commands._arguments import postgres_alias, seconds
from django_poolguard.management.commands._tables import table
from django_poolguard.models import LeakEvent

LONG_CHECKOUT_S = 1.0  # checkouts held at least this long are listed with their context
MAX_CHECKOUTS = 20
LEAK_EVENTS = 10
STACK_FRAMES = 12  # frames per leak event shown by --leaks
EXIT_CODES = {"healthy": 0, "warning": 1, "critical": 2}


class Command(BaseCommand):
    help = (
        "Show every live process's connection pools (totals per alias, per process, long checkouts), "
        "the database's sessions from pg_stat_activity and the connection budget."
    )
    requires_system_checks: list[str] = []  # a probe must answer even when a check fails

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--json", action="store_true", help="Print the fleet view as JSON.")
        parser.add_argument(
            "--watch", type=float, metavar="SECONDS", help="Redraw every SECONDS until Ctrl-C."
        )
        parser.add_argument(
            "--alias", help="Only this database alias (default: all; database side: default)."
        )
        parser.add_argument("--leaks", action="store_true", help="Also list recent leak events with stacks.")
        parser.add_argument(
            "--top",
            action="store_true",
            help="Also show the pool-time profile: the routes, tasks and threads holding each alias's "
            "connections longest, the database's share of that time, and the findings.",
        )
        parser.add_argument(
            "--check",
            action="store_true",
            help="Print one status line and exit 0 (healthy), 1 (warning) or 2 (critical).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        watch = seconds(options["watch"], "--watch", allow_zero=False)
        alias = options["alias"]
        if alias is not None:
            postgres_alias(alias)
        if watch is not None and options["check"]:
            raise CommandError("--watch and --check cannot be combined: --check answers once, for probes.")
        if options["check"]:
            data = collect.collect(alias, history=False)
            state = collect.status(data)
            if options["json"]:
                self.stdout.write(json.dumps({**data, "status": state}, indent=2, default=str))
            else:
                self.stdout.write(check_line(state, data))
            sys.exit(EXIT_CODES[state])
        if watch is None:
            self.show(alias, options)
            return
        try:
            while True:
                if not options["json"] and self.stdout.isatty():
                    self.stdout.write("\033[H\033[2J", ending="")
                self.show(alias, options)
                self.stdout.flush()
                time.sleep(watch)
        except KeyboardInterrupt:
            return

    def show(self, alias: str | None, options: dict[str, Any]) -> None:
        data = collect.collect(alias, history=False)
        if options["leaks"]:
            try:
                data["leak_events"] = leak_events(postgres_alias(alias), LEAK_EVENTS)
            except psycopg.Error as exc:
                data["errors"].append(collect.error_entry("leaks", postgres_alias(alias), exc))
        if options["json"]:
            # One document per line under --watch, so a pipe can read them one by one.
            indent = None if options["watch"] else 2
            self.stdout.write(json.dumps(data, indent=indent, default=str))
        else:
            self.stdout.write(render(data, top=options["top"]))


def check_line(state: str, data: dict[str, Any]) -> str:
    """``POOLGUARD WARNING - default: 8/8 in use, 2 waiting (3 processes)``: the Nagios style."""
    totals: dict[str, AliasTotals] = data["aliases"]
    parts = [
        f"{alias}: {t['in_use']}/{t['max']} in use, {t['waiting']} waiting "
        f"({t['processes']} process{'' if t['processes'] == 1 else 'es'}, {t['status']})"
        for alias, t in totals.items()
    ]
    parts += [f"{e['part']} unavailable: {e['error']}" for e in data.get("errors", [])]
    parts += lease_problems(data)
    if data.get("unreadable"):
        parts.append(unreadable_line(data["unreadable"]))
    if data.get("budget", {}).get("status") == "over":
        parts.append("budget: " + describe(data["budget"]))
    return escape_controls(f"POOLGUARD {state.upper()} - " + ("; ".join(parts) or "no published pools"))


def leak_events(alias: str, limit: int) -> list[dict[str, Any]]:
    """The most recent LeakEvent rows, read over the side connection (no pool slot taken)."""
    columns = (
        "alias",
        "workload",
        "kind",
        "context",
        "host",
        "pid",
        "thread",
        "held_seconds",
        "first_seen",
        "last_seen",
        "count",
        "resolved",
        "stack",
    )
    with side_cursor(alias) as cursor:
        cursor.execute(
            f"SELECT {', '.join(columns)} FROM {LeakEvent._meta.db_table} ORDER BY last_seen DESC LIMIT %s",
            [limit],
        )
        rows = cursor.fetchall()
    return [dict(zip(columns, row, strict=True)) for row in rows]


def _ms(value: Any) -> str:
    return f"{float(value or 0):.1f} ms"


def _s(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f} s"


def _when(value: Any) -> str:
    """A timestamp in the project's TIME_ZONE, named, as the admin shows it."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    if timezone.is_naive(moment):
        return str(moment)[:19]
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S %Z")


def render(data: dict[str, Any], *, top: bool = False) -> str:
    """The fleet view as text, in the order an on-call engineer reads it."""
    lines = [
        f"Poolguard fleet at {_when(data['generated_at'])}: "
        f"{len(data['processes'])} live process(es), published to {data['publish'] or 'nowhere (PUBLISH=None)'}",
        "",
    ]
    for error in data.get("errors", []):
        lines.append(f"! {error['part']} ({error['where']}) unavailable: {error['error']}")
    lines += _unreadable(data.get("unreadable") or [])
    totals: dict[str, AliasTotals] = data["aliases"]
    processes: list[ProcessSnapshot] = data["processes"]
    if totals:
        rows = [
            [
                alias,
                t["workload"],
                t["processes"],
                t["in_use"],
                t["idle"],
                t["waiting"],
                t["max"],
                f"{t['utilization']:.0%}",
                _ms(t["acquire_p95_ms"]),
                t["timeouts_total"],
                t["shed_total"],
                f"{t['leaks_active']}/{t['leaks_total']}",
                _release(t["release"], t["released_total"]),
                t["status"],
            ]
            for alias, t in totals.items()
        ]
        lines += table(
            [
                "ALIAS",
                "WORKLOAD",
                "PROCS",
                "IN USE",
                "IDLE",
                "WAITING",
                "MAX",
                "UTIL",
                "ACQ P95",
                "TIMEOUTS",
                "SHED",
                "LEAKS",
                "RELEASE",
                "STATUS",
            ],
            rows,
        )
    else:
        lines.append("No process has published a pool (none running, or PUBLISH=None in them).")
    lines.append("")
    lines += _fleet_budgets(totals)
    if processes:
        rows = []
        for process in processes:
            for alias, a in process["aliases"].items():
                rows.append(
                    [
                        process["host"],
                        process["pid"],
                        process["role"],
                        alias,
                        f"{a['in_use']}/{a['idle']}/{a['waiting']}/{a['max']}",
                        _lease(a),
                        _ms(a["acquire_ms"]["p95"]),
                        f"{a['leaks_active']}/{a['leaks_total']}",
                        _s(process.get("age_s")),
                        a["status"],
                    ]
                )
        lines += table(
            [
                "HOST",
                "PID",
                "ROLE",
                "ALIAS",
                "USE/IDLE/WAIT/MAX",
                "LEASE",
                "ACQ P95",
                "LEAKS",
                "SEEN",
                "STATUS",
            ],
            rows,
        )
        lines.append("")
        lines += _capped(processes)
    if top:
        lines += _top(data["aliases"])
    lines += _long_checkouts(data)
    lines += _database(data.get("database") or {})
    lines += _budget(data.get("budget") or {})
    if "leak_events" in data:
        lines += _leak_events(data["leak_events"])
    # Session SQL, contexts, thread names come from outside: shown, never obeyed by the terminal.
    return "\n".join(escape_controls(line) for line in lines).rstrip() + "\n"


def _top(aliases: dict[str, Any]) -> list[str]:
    """Per alias: the Top holders table, the busy ratio and the findings."""
    lines: list[str] = []
    for alias, t in aliases.items():
        if "top" not in t:
            lines += [f"Top holders of {alias}: no profile published (POOLGUARD['PROFILE'] is off).", ""]
            continue
        busy = "-" if t["busy_ratio"] is None else f"{t['busy_ratio']:.0%}"
        lines.append(
            f"Top holders of {alias} (all processes, since their pools opened): {t['pool_seconds']:.1f} "
            f"pool-seconds, database busy {busy} of them"
        )
        rows = [
            [
                h["label"],
                h["checkouts"],
                f"{h['held_s']:.1f}",
                "-" if h["db_share"] is None else f"{h['db_share']:.0%}",
                _ms(h["idle_per_checkout_s"] * 1000),
                f"{h['queries_mean']:g}/{h['queries_p95']}/{h['queries_max']}",
                f"{_ms(h['acquire_p50_ms'])}/{_ms(h['acquire_p95_ms'])}",
                f"{h['tx_s']:.1f}",
                h["retries"],
                h["origin"] or "-",
            ]
            for h in t["top"]
        ]
        headers = ["LABEL", "CHECKOUTS", "POOL-S", "DB", "IDLE/CHECKOUT", "QUERIES MEAN/P95/MAX"]
        headers += ["ACQUIRE P50/P95", "TX-S", "RETRIES", "TAKES AT"]
        lines += ["  " + line for line in table(headers, rows)] if rows else ["  no connection returned yet"]
        for finding in t["findings"]:
            where = f", at {finding['where']}" if finding["where"] else ""
            lines.append(f"  ! {finding['kind']}: {finding['text']}{where}")
        lines.append("")
    return lines


def _fleet_budgets(totals: dict[str, AliasTotals]) -> list[str]:
    """One line per alias with a fleet budget: the live processes' leases added up against it."""
    lines = [
        "Fleet " + describe_fleet(alias, t["workload"], t["fleet"]).removeprefix("fleet ")
        for alias, t in totals.items()
        if "fleet" in t
    ]
    return [*lines, ""] if lines else []


def _lease(pool: AliasSnapshot) -> str:
    """``max 6, lease 4`` (the configured max_size, which the published max stops showing once the
    lease caps it); ``-`` for an alias without a fleet budget."""
    lease = pool.get("lease")
    if lease is None:
        return "-"
    text = f"max {lease.get('max_size', pool['max'])}, lease {lease['lease']}"
    return text + " (static share)" if lease["fallback"] else text


def _capped(processes: list[ProcessSnapshot]) -> list[str]:
    """Why each capped pool runs below its max_size, in its process's own words; and which run
    on the static share because their lease store is unreachable."""
    lines = []
    for process in processes:
        for alias, a in process["aliases"].items():
            lease = a.get("lease")
            if lease is None or not (lease["capped"] or lease["fallback"]):
                continue
            reasons = [lease["capped"]] if lease["capped"] else []
            if lease["fallback"]:
                reasons.append(
                    f"fallback: static share of {lease['lease']} ({lease['store']} lease store unreachable)"
                )
            lines.append(f"  {process['host']}:{process['pid']} {alias}: {'; '.join(reasons)}")
    return ["Capped by a fleet budget:", *lines, ""] if lines else []


def _unreadable(entries: list[dict[str, Any]]) -> list[str]:
    """Skipped snapshots, each on its own line: the processes listed below are the others."""
    if not entries:
        return []
    if len(entries) == 1:
        return [f"! {unreadable_line(entries)}", ""]
    return [f"! {unreadable_count(entries)}:", *(f"!   {Unreadable(**e).describe()}" for e in entries), ""]


def _release(mode: str, released: int) -> str:
    """``request``, or ``transaction (1795 released)``: when the alias's checkouts go back."""
    return mode if mode == "request" else f"{mode} ({released} released)"


def _long_checkouts(data: dict[str, Any]) -> list[str]:
    processes: list[ProcessSnapshot] = data["processes"]
    found: list[tuple[ProcessSnapshot, str, CheckoutSnapshot]] = []
    for process in processes:
        for alias, a in process["aliases"].items():
            for checkout in a.get("checkouts", []):
                if checkout["held_s"] >= LONG_CHECKOUT_S:
                    found.append((process, alias, checkout))
    if not found:
        return []
    found.sort(key=lambda item: -item[2]["held_s"])
    lines = [f"Checkouts held {LONG_CHECKOUT_S:g} s or more (longest first):"]
    for process, alias, c in found[:MAX_CHECKOUTS]:
        where = c["stack"][0] if c["stack"] else "no application frame"
        flags = (
            ("" if c["alive"] else " [holder thread dead]")
            + (" [in transaction]" if c["in_transaction"] else "")
            + (f" [held: {c['held_reason']}]" if c["held_reason"] else "")
        )
        lines.append(
            f"  {c['held_s']:>7.1f} s  {alias} on {process['host']}:{process['pid']}  thread {c['thread']}  "
            f"{c['context']}  at {where}{flags}"
        )
    if len(found) > MAX_CHECKOUTS:
        lines.append(f"  ... and {len(found) - MAX_CHECKOUTS} more (see --json)")
    return [*lines, ""]


def _database(db: dict[str, Any]) -> list[str]:
    if not db:
        return []
    states = ", ".join(f"{state} {count}" for state, count in db["by_state"].items()) or "none"
    lines = [
        f"Database (alias {db['alias']}): {db['connections']} sessions on this database, "
        f"{db['server_connections']} on the server, max_connections {db['max_connections']}",
        f"  by state: {states}",
    ]
    rows = [[r["application_name"] or "(none)", r["state"], r["count"]] for r in db["by_application"]]
    lines += ["  " + line for line in table(["APPLICATION", "STATE", "SESSIONS"], rows)]
    for label, key, age in (
        ("oldest transaction", "oldest_transaction", "transaction_s"),
        ("longest query", "longest_query", "query_s"),
    ):
        session = db.get(key)
        if session:
            query = " ".join((session["query"] or "").split())[:120]
            lines.append(
                f"  {label}: {_s(session[age])}, pid {session['pid']} ({session['application_name'] or 'no application_name'}, "
                f"{session['state']}): {query}"
            )
    return [*lines, ""]


def _budget(budget: dict[str, Any]) -> list[str]:
    if not budget:
        return []
    verdict = {"over": "OVER BUDGET (E001)", "tight": "within 10 % (W001)", "ok": "ok"}[budget["status"]]
    lines = [f"Budget: {describe(budget)}: {verdict}"]
    for name, w in budget["workloads"].items():
        declared = "" if w["declared"] else " (not in DEPLOYMENT)"
        budgets = w.get("budgets") or {}
        # A budgeted alias counts once for the fleet (its budget), not max_size per process.
        fleet = "".join(f"fleet_budget {b or 'auto'} + " for b in budgets.values())
        per_process = sum(size for alias, size in w["pools"].items() if alias not in budgets)
        lines.append(
            f"  {name}: {fleet}{w['instances']} x {w['processes']} x ({per_process} + {w['side_connections']}) = "
            f"{w['connections']}{declared}; largest safe max_size {w['safe_max_size']}"
        )
    return [*lines, ""]


def _leak_events(events: list[dict[str, Any]]) -> list[str]:
    lines = [f"Recent leak events ({len(events)}):"]
    if not events:
        lines.append("  none recorded")
    for event in events:
        state = "resolved" if event["resolved"] else "open"
        lines.append(
            f"  {event['kind']} on {event['alias']} ({event['workload']}), {state}, seen {event['count']} times, "
            f"last {_when(event['last_seen'])}, held {event['held_seconds']:.1f} s: "
            f"{event['context'] or 'thread ' + event['thread']}"
        )
        for frame in (event["stack"] or "").splitlines()[:STACK_FRAMES]:
            lines.append(f"      {frame}")
    return [*lines, ""]
