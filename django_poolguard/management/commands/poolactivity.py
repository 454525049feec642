"""``manage.py poolactivity``: this database's sessions, and cancelling or terminating them."""

from __future__ import annotations

import json
import logging
from typing import Any

import psycopg
from django.core.management.base import BaseCommand, CommandError

from django_poolguard.escaping import escape_controls
from django_poolguard.fleet import activity
from django_poolguard.management.commands._arguments import postgres_alias, seconds
from django_poolguard.management.commands._tables import table

logger = logging.getLogger("django_poolguard")

STATES = {
    "active": "active",
    "idle": "idle",
    "idle-in-transaction": "idle in transaction",
    "idle-in-transaction-aborted": "idle in transaction (aborted)",
}
QUERY_WIDTH = 80  # characters of SQL per line of the table; --json carries up to activity.QUERY_CHARS


class Command(BaseCommand):
    help = (
        "List the sessions of this database from pg_stat_activity (never other databases), "
        "optionally cancelling their queries or terminating them."
    )
    requires_system_checks: list[str] = []  # an emergency tool must run even when a check fails

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--alias", help="Database alias (default: default).")
        parser.add_argument(
            "--older-than",
            type=float,
            metavar="SECONDS",
            help="Only sessions whose transaction (else query, else idle time) is older than SECONDS.",
        )
        parser.add_argument("--state", choices=sorted(STATES), help="Only sessions in this state.")
        parser.add_argument(
            "--workload", help="Only sessions of this workload (from poolguard's application_name)."
        )
        parser.add_argument("--pid", type=int, action="append", help="Only this backend pid (repeatable).")
        action = parser.add_mutually_exclusive_group()
        action.add_argument("--cancel", action="store_true", help="Cancel the current query of the sessions.")
        action.add_argument("--terminate", action="store_true", help="Terminate (disconnect) the sessions.")
        parser.add_argument("--yes", action="store_true", help="Do not ask for confirmation.")
        parser.add_argument(
            "--include-superusers",
            action="store_true",
            help="Also act on superusers' sessions (skipped by default).",
        )
        parser.add_argument("--json", action="store_true", help="Print the sessions (and results) as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        alias = postgres_alias(options["alias"])
        older_than = seconds(options["older_than"], "--older-than")
        state = STATES[options["state"]] if options["state"] else None
        pids = options["pid"] or []
        if any(pid <= 0 for pid in pids):
            raise CommandError(f"--pid must be a positive backend pid, not {min(pids)}.")
        action = "cancel" if options["cancel"] else "terminate" if options["terminate"] else None
        has_filter = pids or older_than is not None or state or options["workload"]
        if action and not has_filter:
            raise CommandError(
                f"--{action} needs at least one of --pid, --older-than, --state or --workload, "
                "so it cannot hit every session of the database by accident."
            )
        try:
            sessions = [s for s in activity.sessions(alias) if not s["own"]]
        except Exception as exc:
            raise CommandError(f"could not read pg_stat_activity through alias {alias!r}: {exc}") from exc
        known = {s["pid"] for s in sessions}
        missing = [pid for pid in pids if pid not in known]
        if missing and (action or len(missing) == len(pids)):
            raise CommandError(
                f"--pid: no session {', '.join(map(str, missing))} on this database (alias {alias!r}); "
                "poolactivity never touches other databases or its own session."
            )
        selected = [
            s
            for s in sessions
            if (not pids or s["pid"] in pids)
            and activity.matches(s, older_than=older_than, state=state, workload=options["workload"])
        ]
        results: list[dict[str, Any]] = []
        if action:
            results = self.act(alias, action, selected, options)
        if options["json"]:
            payload: dict[str, Any] = {"alias": alias, "sessions": selected}
            if action:
                payload["action"] = action
                payload["results"] = results
            self.stdout.write(json.dumps(payload, indent=2, default=str))
        elif not action:
            self.stdout.write(render(selected))

    def act(
        self, alias: str, action: str, selected: list[dict[str, Any]], options: dict[str, Any]
    ) -> list[dict[str, Any]]:
        include_superusers = options["include_superusers"]
        targets = [s for s in selected if include_superusers or not s["superuser"]]
        refused = [s for s in selected if s not in targets]
        results = [
            {"pid": s["pid"], "done": False, "reason": "superuser session (pass --include-superusers)"}
            for s in refused
        ]
        for session in refused:
            self.stderr.write(
                f"Skipping session {session['pid']} of superuser {session['user']!r}: pass --include-superusers to {action} it."
            )
        if not targets:
            if refused:
                raise CommandError(
                    f"refused to {action} {len(refused)} superuser session(s); pass --include-superusers to {action} them."
                )
            if not options["json"]:
                self.stdout.write("No session matches; nothing to do.")
            return results
        verb = "Cancel the current query of" if action == "cancel" else "Terminate"
        if not options["yes"]:
            self.stdout.write(render(targets))
            try:
                answer = input(f"{verb} these {len(targets)} session(s)? Type 'yes' to continue: ")
            except EOFError:
                answer = ""
            if answer.strip().lower() not in {"yes", "y"}:
                raise CommandError(f"{action} aborted: not confirmed (pass --yes to skip the question).")
        for session in targets:
            try:
                done = activity.signal_session(
                    alias, session["pid"], action, include_superusers=include_superusers
                )
                reason = "" if done else "the session had already ended, or this role may not signal it"
            except activity.RefusedSession as exc:
                done, reason = False, str(exc)
            except psycopg.Error as exc:  # e.g. the role may not signal another role's session
                done, reason = False, f"PostgreSQL refused: {str(exc).strip().splitlines()[0]}"
            results.append({"pid": session["pid"], "done": done, "reason": reason})
            if done:
                logger.warning(
                    "poolactivity: %s session %s on alias %r (application %r, user %r, %s, transaction %s s): %s",
                    "cancelled the query of" if action == "cancel" else "terminated",
                    session["pid"],
                    alias,
                    session["application_name"],
                    session["user"],
                    session["state"],
                    session["transaction_s"],
                    escape_controls(" ".join((session["query"] or "").split()))[:200],
                )
            if not options["json"]:
                past = "cancelled the query of" if action == "cancel" else "terminated"
                self.stdout.write(
                    f"{past} session {session['pid']}"
                    if done
                    else f"could not {action} session {session['pid']}: {reason}"
                )
        return results


def render(sessions: list[dict[str, Any]]) -> str:
    if not sessions:
        return "No session matches.\n"
    headers = ["PID", "USER", "APPLICATION", "STATE", "XACT", "QUERY AGE", "WAIT", "QUERY"]
    rows = []
    for s in sessions:
        user = f"{s['user']}*" if s["superuser"] else str(s["user"])
        wait = f"{s['wait_event_type']}:{s['wait_event']}" if s["wait_event_type"] else ""
        query = escape_controls(" ".join((s["query"] or "").split()))
        if len(query) > QUERY_WIDTH:
            query = query[: QUERY_WIDTH - 3] + "..."
        rows.append(
            [
                s["pid"],
                user,
                s["application_name"] or "",
                s["state"] or "",
                _age(s["transaction_s"]),
                _age(s["query_s"]),
                wait,
                query,
            ]
        )
    lines = table(headers, rows)
    lines.append(
        f"{len(sessions)} session(s); * = superuser (skipped by --cancel/--terminate unless --include-superusers)"
    )
    return "\n".join(lines) + "\n"


def _age(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"
