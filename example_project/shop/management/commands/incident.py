"""``manage.py incident <name>``: replay a seed incident with and without poolguard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_poolguard.testing import stop_embedded_server
from shop import bootstrap
from shop.incidents import SCENARIOS, SIDE_NAMES, execute, mode

NAMES = [*SCENARIOS, "autoscale"]
MANAGE = Path(__file__).resolve().parents[3] / "manage.py"
PROGRESS = "progress: "  # a child's stderr lines the parent shows while the side runs
SIDE_TIMEOUT = 300.0  # s
# What each side is called in the table (SIDE_NAMES names it in the report).
SHORT = {
    "native": "Django",
    "guarded": "poolguard",
    "prioritized": "poolguard + priorities",
    "transaction": "poolguard, release=transaction",
}


class Command(BaseCommand):
    help = (
        "Replay a seed incident against the example shop, once with Django's own pool and once with "
        "poolguard (the spike also with poolguard's priorities), and print what happened and what "
        "poolguard named as the cause."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help=f"one of: {', '.join(NAMES)}")
        parser.add_argument(
            "--only",
            choices=list(SIDE_NAMES),
            help="run one side only, in this process (the default runs both, each in its own process)",
        )
        parser.add_argument("--json", action="store_true", help="print the results as JSON")

    def handle(self, *args: Any, name: str, only: str | None, json: bool, **options: Any) -> None:
        if name not in NAMES:
            raise CommandError(f"Unknown incident {name!r}; choose one of: {', '.join(NAMES)}.")
        if name == "autoscale":
            from shop.autoscale import replay

            result = replay()
            self.stdout.write(self._dump(result) if json else result["text"])
            return
        if only:
            if only != mode():
                raise CommandError(
                    f"--only {only} needs {_side_environment(only)} in the environment (it is "
                    f"{mode()!r}): pools are chosen at startup."
                )
            self.stderr.write(f"{PROGRESS}preparing the database {settings.DATABASE_NAME}")
            bootstrap.prepare()
            try:
                result = execute(
                    SCENARIOS[name], only, progress=lambda line: self.stderr.write(PROGRESS + line)
                )
            finally:
                bootstrap.close_pools()
            self.stdout.write(self._dump(result) if json else self._describe(result))
            return
        # Each run gets its own database: a replay beside the running demo must not write into the
        # demo's, nor merge its leak events with the demo's.
        database = f"poolguard_incident_{os.getpid()}"
        try:
            results = [self._side(name, side, database) for side in SCENARIOS[name].sides]
        finally:
            bootstrap.drop_database(database)
            if stop_embedded_server() is not None:
                self.stderr.write("Stopped the embedded PostgreSQL this replay started.")
        if json:
            self.stdout.write(self._dump(results))
            return
        for result in results:
            self.stdout.write(self._describe(result))
        self.stdout.write(self._table(results))

    def _side(self, name: str, side: str, database: str) -> dict[str, Any]:
        """One side in a fresh process: its pools, engine and middleware come from its settings."""
        env = {**os.environ, **_side_env(side), "SHOP_DATABASE_NAME": database}
        self.stderr.write(f"Replaying {name!r} with {SIDE_NAMES[side]}...")
        command = [sys.executable, str(MANAGE), "incident", name, "--only", side, "--json"]
        started = time.monotonic()
        child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out: list[str] = []
        reader = threading.Thread(target=lambda: out.append(child.stdout.read() if child.stdout else ""))
        reader.start()
        timer = threading.Timer(SIDE_TIMEOUT, child.kill)
        timer.start()
        errors: list[str] = []
        try:
            for line in child.stderr or ():
                if line.startswith(PROGRESS):
                    self.stderr.write(
                        f"  {time.monotonic() - started:5.1f} s  {line[len(PROGRESS) :].rstrip()}"
                    )
                else:
                    errors.append(line)
            child.wait()
        finally:
            timer.cancel()
            reader.join()
        if child.returncode != 0:
            raise CommandError(f"The {side} run of {name!r} failed:\n{''.join(errors)[-3000:]}")
        return json_loads_last("".join(out))

    @staticmethod
    def _dump(data: Any) -> str:
        return json.dumps(data, indent=2, default=str)

    def _describe(self, r: dict[str, Any]) -> str:
        scenario = SCENARIOS[r["scenario"]]
        side = SIDE_NAMES[r["mode"]]
        lines = [
            "",
            f"== {r['scenario']} ({scenario.seed}: {scenario.title}) with {side}",
            f"   {r['requests']} requests: {r['served']} served, {r['shed_503']} shed fast (503), "
            f"{r['failed_5xx']} failed (5xx)",
            f"   product-list probe answered {r['probes_answered']}/{r['probes']} within 4 s "
            f"(worst {r['probe_worst_s']} s); pool afterwards: {r['usable_after']} connections usable",
        ]
        if "checkouts" in r:
            lines.append(
                f"   checkouts (critical work) served {r['checkouts_served']}/{r['checkouts']} "
                f"(slowest {r['checkout_worst_s']} s)"
            )
        if r["named_at_s"] is not None:
            lines.append(f"   poolguard named the cause after {r['named_at_s']} s: {r['named']}")
        elif r["mode"] != "native" and scenario.culprit:
            lines.append("   poolguard did not name the cause.")
        if r["first_error"]:
            lines.append(f"   first error: {r['first_error'][:300]}")
        return "\n".join(lines)

    def _table(self, results: list[dict[str, Any]]) -> str:
        checkouts = all("checkouts" in r for r in results)
        head = (
            "| pool | served | 503 fast | 5xx | probe answered | worst probe | usable after | cause named |"
        )
        if checkouts:
            head += " checkouts served | slowest checkout |"
        rows = [head, "|" + "---|" * (10 if checkouts else 8)]
        for r in results:
            named = f"{r['named_at_s']} s" if r["named_at_s"] is not None else "no"
            if not SCENARIOS[r["scenario"]].culprit:
                named = "-"  # a comparison of configurations, not an incident with a culprit
            row = (
                f"| {SHORT[r['mode']]} | {r['served']} | {r['shed_503']} | "
                f"{r['failed_5xx']} | {r['probes_answered']}/{r['probes']} | {r['probe_worst_s']} s | "
                f"{r['usable_after']} | {named} |"
            )
            if checkouts:
                row += f" {r['checkouts_served']}/{r['checkouts']} | {r['checkout_worst_s']} s |"
            rows.append(row)
        return "\n" + "\n".join(rows)


def _side_env(side: str) -> dict[str, str]:
    """The environment a side's process starts with: its pools are chosen from it at startup."""
    if side == "transaction":
        return {"SHOP_POOL_MODE": "guarded", "SHOP_RELEASE": "transaction"}
    return {"SHOP_POOL_MODE": side, "SHOP_RELEASE": "request"}


def _side_environment(side: str) -> str:
    return " and ".join(f"{key}={value}" for key, value in _side_env(side).items())


def json_loads_last(text: str) -> Any:
    """The JSON document a child printed (after whatever its logging wrote to stdout)."""
    start = text.find("{")
    if start < 0:
        raise CommandError(f"The child printed no result:\n{text[-2000:]}")
    return json.loads(text[start:])
