"""``manage.py poolbudget``: can the whole fleet's pools fit in the server's max_connections?"""

from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

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
        if options["json"]:
            self.stdout.write(json.dumps(data, indent=2))
        else:
            self.stdout.write(render(data))


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
            "+".join(str(size) for size in w["pools"].values()) + f" ({', '.join(w['pools'])})",
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
    return "\n".join(lines) + "\n"
