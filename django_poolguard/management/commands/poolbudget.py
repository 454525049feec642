"""``manage.py poolbudget``: can the whole fleet's pools fit in the server's max_connections?"""

from __future__ import annotations

import json
from typing import Any, TypedDict

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from django_poolguard.escaping import escape_controls
from django_poolguard.fleet import budget
from django_poolguard.fleet.activity import server_settings
from django_poolguard.management.commands._arguments import postgres_alias
from django_poolguard.management.commands._tables import table

POSTGRES_DEFAULT_SUPERUSER_RESERVED = 3


class Command(BaseCommand):
    help = (
        "Compare max_connections - superuser_reserved_connections - RESERVED_CONNECTIONS with "
        "instances x processes x (max_size + side connection) per workload (POOLGUARD['DEPLOYMENT']), "
        "and print the largest safe max_size per workload."
    )
    requires_system_checks: list[str] = []  # it explains E001; it must not be blocked by it

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--alias", help="Database alias whose server to budget (default: default).")
        parser.add_argument(
            "--max-connections",
            type=int,
            metavar="N",
            help="Plan for this max_connections instead of asking the server (no connection is made).",
        )
        parser.add_argument(
            "--superuser-reserved",
            type=int,
            metavar="N",
            help=f"superuser_reserved_connections to plan with (default: the server's, or "
            f"{POSTGRES_DEFAULT_SUPERUSER_RESERVED} with --max-connections).",
        )
        parser.add_argument("--json", action="store_true", help="Print the budget as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        alias = postgres_alias(options["alias"])
        max_connections = options["max_connections"]
        superuser_reserved = options["superuser_reserved"]
        if max_connections is not None and max_connections < 1:
            raise CommandError(f"--max-connections must be a whole number >= 1, not {max_connections}.")
        if superuser_reserved is not None and superuser_reserved < 0:
            raise CommandError(f"--superuser-reserved must be a whole number >= 0, not {superuser_reserved}.")
        if max_connections is None:
            try:
                server = server_settings(alias)
            except Exception as exc:
                raise CommandError(
                    f"could not read max_connections through alias {alias!r} ({exc}); "
                    "pass --max-connections to plan without the server."
                ) from exc
            source = "the server"
        else:
            server = {
                "max_connections": max_connections,
                "superuser_reserved_connections": POSTGRES_DEFAULT_SUPERUSER_RESERVED,
                "server_connections": 0,
            }
            source = "--max-connections"
        if superuser_reserved is not None:
            server["superuser_reserved_connections"] = superuser_reserved
        try:
            data = budget.for_alias(alias, server=server)
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        data["source"] = source
        data["fleet_budgets"] = fleet_budgets(data)
        if options["json"]:
            self.stdout.write(json.dumps(data, indent=2))
        else:
            self.stdout.write(render(data))


def _pool_names(w: dict[str, Any]) -> str:
    """``default, reports``; a budgeted alias says so (it is counted as its budget, once for the fleet)."""
    budgets = w.get("budgets") or {}
    return ", ".join(
        alias + (f": fleet_budget {budgets[alias] or 'auto'}" if alias in budgets else "")
        for alias in w["pools"]
    )


def render(data: dict[str, Any]) -> str:
    lines = [
        f"Connection budget of the server behind alias {data['alias']!r} (max_connections from {data['source']}):",
        f"    {data['max_connections']:>6}  max_connections",
        f"  - {data['superuser_reserved']:>6}  superuser_reserved_connections",
        f"  - {data['reserved']:>6}  POOLGUARD['RESERVED_CONNECTIONS']",
        f"  = {data['ceiling']:>6}  available to the fleet",
        "",
    ]
    headers = [
        "WORKLOAD",
        "INSTANCES",
        "PROCESSES",
        "MAX_SIZE",
        "+SIDE",
        "CONNECTIONS",
        "CEILING",
        "SAFE MAX_SIZE",
    ]
    rows = [
        [
            name + ("" if w["declared"] else " (not in DEPLOYMENT: 1 x 1)"),
            w["instances"],
            w["processes"],
            "+".join(str(size) for size in w["pools"].values()) + f" ({_pool_names(w)})",
            w["side_connections"],
            w["connections"],
            w["ceiling"],
            w["safe_max_size"] if w["safe_max_size"] is not None else "none fits",
        ]
        for name, w in data["workloads"].items()
    ]
    lines += table(headers, rows)
    lines.append("")
    over = data["planned"] - data["ceiling"]
    if data["status"] == budget.OVER:
        verdict = f"OVER BUDGET by {over}: the fleet can open {data['planned']} of {data['ceiling']} (system check E001)."
    elif data["status"] == budget.TIGHT:
        verdict = (
            f"Within 10 % of the limit: the fleet can open {data['planned']} of {data['ceiling']}, "
            f"{-over} to spare (system check W001)."
        )
    else:
        verdict = f"OK: the fleet can open {data['planned']} of {data['ceiling']}, {-over} to spare."
    lines.append(verdict)
    lines.append(
        "CEILING is what a workload may use once the others took theirs; SAFE MAX_SIZE the largest max_size "
        "per process (summed over its aliases) that fits in it."
    )
    lines += _fleet_budget_lines(data.get("fleet_budgets") or [])
    # Workload and alias names are the user's text: shown, never obeyed by the terminal.
    return "\n".join(escape_controls(line) for line in lines) + "\n"


# --- Fleet budgets (OPTIONS["poolguard"]["fleet_budget"]) ----------------------------------------


class FleetBudgetPlan(TypedDict):
    """A budgeted alias at its workload's DEPLOYMENT maximum: the ``fleet_budgets`` of ``--json``."""

    alias: str
    workload: str
    fleet_budget: int | str  # as written: a number, or "auto"
    budget: int  # "auto" resolved to what the server leaves the workload's processes
    processes: int  # instances x processes from DEPLOYMENT (1 x 1 when undeclared)
    declared: bool
    per_process: int  # budget // processes: the most each process holds then
    max_size: int
    unbudgeted: int  # processes x max_size: what the pools could open without the budget


def _fleet_budget_setting(alias: str) -> int | str | None:
    """``OPTIONS["poolguard"]["fleet_budget"]`` of ``alias``, or ``None``; a bad value is a
    ``CommandError`` naming the setting (system check E018 says the same)."""
    options = (settings.DATABASES[alias].get("OPTIONS") or {}).get("poolguard") or {}
    value = options.get("fleet_budget") if isinstance(options, dict) else None
    if value is None or value == "auto" or (type(value) is int and value >= 1):
        return value
    raise CommandError(
        f"DATABASES[{alias!r}]['OPTIONS']['poolguard']['fleet_budget'] is {value!r}; it must be a whole "
        'number >= 1 or "auto" (see system check E018).'
    )


def fleet_budgets(data: dict[str, Any]) -> list[FleetBudgetPlan]:
    """Each budgeted alias of each workload on the server, at the workload's DEPLOYMENT maximum.

    ``"auto"`` is planned as each process resolves it (``budget.auto_budget``): the workload's
    ceiling less its own other connections (side connections, unbudgeted pools), at least 1.
    """
    plans: list[FleetBudgetPlan] = []
    for workload, w in data["workloads"].items():
        processes = w["instances"] * w["processes"]
        for alias, max_size in w["pools"].items():
            written = _fleet_budget_setting(alias)
            if written is None:
                continue
            if written == "auto":
                resolved = max(1, w["ceiling"] - w["connections"])
            else:
                assert isinstance(written, int)
                resolved = written
            plans.append(
                {
                    "alias": alias,
                    "workload": workload,
                    "fleet_budget": written,
                    "budget": resolved,
                    "processes": processes,
                    "declared": w["declared"],
                    "per_process": resolved // processes if processes else resolved,
                    "max_size": max_size,
                    "unbudgeted": processes * max_size,
                }
            )
    return plans


def describe_plan(plan: FleetBudgetPlan) -> str:
    """``web: fleet_budget 120 → 5 per process at 24 processes (max_size 12 would need 288)``"""
    label = plan["workload"] if plan["alias"] == plan["workload"] else f"{plan['workload']} ({plan['alias']})"
    written = plan["fleet_budget"]
    budget = f"auto = {plan['budget']}" if written == "auto" else str(plan["budget"])
    processes = f"{plan['processes']} process{'' if plan['processes'] == 1 else 'es'}"
    if not plan["declared"]:
        processes += " (not in DEPLOYMENT: 1 x 1)"
    line = (
        f"{label}: fleet_budget {budget} \u2192 {plan['per_process']} per process at {processes} "
        f"(max_size {plan['max_size']} would need {plan['unbudgeted']})"
    )
    if plan["per_process"] == 0:
        line += (
            f"; fewer than one connection per process: {plan['processes'] - plan['budget']} of them would get "
            "none. Raise the budget or lower DEPLOYMENT"
        )
    elif plan["per_process"] >= plan["max_size"]:
        line += f"; max_size caps first: the budget only binds above {plan['budget'] // plan['max_size']} processes"
    return line


def _fleet_budget_lines(plans: list[FleetBudgetPlan]) -> list[str]:
    if not plans:
        return []
    return [
        "",
        "Fleet budgets (each process holds at most budget / processes, at the DEPLOYMENT maximum):",
        *(f"  {describe_plan(plan)}" for plan in plans),
        "A budgeted pool opens at most its lease; `manage.py poolstats` shows the leases the live processes hold.",
    ]
