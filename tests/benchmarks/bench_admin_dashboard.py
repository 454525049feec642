"""What the admin dashboard costs per refresh.

Run from the repository root (needs PostgreSQL; creates and drops its own database)::

    /work/venv/bin/python tests/benchmarks/bench_admin_dashboard.py [--rounds 50] [--markdown]

1. Rendering only: ``dashboard.build()`` plus the body template for fleets of growing size
   (processes x aliases, checkouts per alias with 20-line stacks, sessions), in this process,
   without the database. This is the part that grows with the fleet.
2. End to end: the page and its JSON refresh view through Django's test client on a real
   database, with this process's pools holding connections in 6 threads and the fleet read
   as ``fleet.collect`` reads it (published snapshots, ``pg_stat_activity``, the budget).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
BENCH_DB = os.environ.get("POOLGUARD_BENCH_DB", "bench_poolguard_admin")

from django_poolguard.testing import database_url  # noqa: E402

database_url(BENCH_DB)  # exported as DATABASE_URL, which tests.settings reads

import django  # noqa: E402

django.setup()

import psycopg  # noqa: E402
from django.contrib.auth.models import User  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connections  # noqa: E402
from django.template.loader import render_to_string  # noqa: E402
from django.test import Client, RequestFactory  # noqa: E402

from django_poolguard.engine.side_connection import close_all  # noqa: E402
from django_poolguard.fleet.collect import totals  # noqa: E402
from django_poolguard.fleet.schema import ProcessSnapshot, Unreadable, read_entry  # noqa: E402
from django_poolguard.web import dashboard  # noqa: E402

STACK = [f"shop/module_{i}.py:{10 + i} in function_{i}" for i in range(20)]


def readable(raw: dict[str, Any]) -> ProcessSnapshot:
    entry = read_entry(raw)
    assert not isinstance(entry, Unreadable), entry
    return entry


def synthetic_fleet(processes: int, aliases: int, checkouts: int) -> dict[str, Any]:
    now = time.time()
    history = [[now - 900 + 5 * i, i % 7, 2, 0, 10, 0.4] for i in range(180)]
    fleet: dict[str, Any] = {
        "generated_at": "2026-01-01T00:00:00+00:00",
        "processes": [
            {
                "host": f"web-{p // 4}",
                "pid": 1000 + p,
                "role": "web",
                "age_s": 1.5,
                "aliases": {
                    f"alias_{a}": {
                        "workload": "web",
                        "min": 0,
                        "max": 10,
                        "size": 6,
                        "in_use": checkouts,
                        "idle": 2,
                        "waiting": 0,
                        "status": "healthy",
                        "acquire_ms": {"p50": 0.1, "p95": 0.4, "p99": 2.0},
                        "acquired_total": 12000,
                        "timeouts_total": 0,
                        "shed_total": 0,
                        "leaks_active": 0,
                        "leaks_total": 3,
                        "reclaimed_total": 1,
                        "leak_threshold": 30,
                        "history": history,
                        "checkouts": [
                            {
                                "thread": f"worker-{c}",
                                "alive": True,
                                "held_s": 0.5 * c,
                                "context": f"GET /api/items/{c}",
                                "in_transaction": False,
                                "stack": STACK,
                            }
                            for c in range(checkouts)
                        ],
                    }
                    for a in range(aliases)
                },
            }
            for p in range(processes)
        ],
        "database": {},
        "budget": {},
    }
    # Read as fleet.collect() reads published entries, which fills what the synthetic ones leave out.
    fleet["processes"] = [{**readable(p), "age_s": p["age_s"]} for p in fleet["processes"]]
    fleet["aliases"] = totals(fleet["processes"])  # as fleet.collect() adds them, with the history
    return fleet


def synthetic_sessions(count: int) -> list[dict[str, Any]]:
    return [
        {
            "alias": "default",
            "error": None,
            "more": 0,
            "sessions": [
                {
                    "pid": 20000 + i,
                    "user": "app",
                    "application_name": f"web:default:web-{i % 8}:{1000 + i}",
                    "state": "idle",
                    "wait_event": "ClientRead",
                    "query": "SELECT * FROM shop_item WHERE id = 42",
                    "superuser": False,
                    "own": False,
                    "age_s": float(i),
                    "busy": False,
                }
                for i in range(count)
            ],
        }
    ]


def timed(fn: Any, rounds: int) -> tuple[float, float]:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.95))]


def bench_rendering(rounds: int) -> list[tuple[str, int, float, float]]:
    request = RequestFactory().get("/admin/django_poolguard/pool/data/")
    request.user = User(username="bench", is_staff=True, is_superuser=True)
    rows = []
    for processes, aliases, checkouts, sessions in ((1, 1, 2, 10), (10, 2, 5, 50), (40, 3, 8, 100)):
        fleet = synthetic_fleet(processes, aliases, checkouts)

        def render(fleet: dict[str, Any] = fleet, sessions: int = sessions) -> str:
            context = dashboard.build(fleet, with_sessions=False)
            context.update(session_groups=synthetic_sessions(sessions), can_signal=True, refresh_seconds=5)
            return render_to_string("django_poolguard/dashboard_body.html", context, request=request)

        size = len(render().encode())
        p50, p95 = timed(render, rounds)
        label = f"{processes} processes x {aliases} aliases, {processes * aliases * checkouts} checkouts, {sessions} sessions"
        rows.append((label, size, p50, p95))
    return rows


class Holder(threading.Thread):
    def __init__(self, release: threading.Event) -> None:
        super().__init__(daemon=True)
        self.release, self.holding = release, threading.Event()

    def run(self) -> None:
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT 1")
            self.holding.set()
            self.release.wait(120)
        connections["default"].close()


def bench_end_to_end(rounds: int) -> list[tuple[str, int, float, float]]:
    admin_params = connections["default"].get_connection_params()
    admin_params = {
        k: v for k, v in admin_params.items() if k not in ("options", "application_name", "context")
    }
    admin_params["dbname"] = "postgres"
    with psycopg.connect(**admin_params, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{BENCH_DB}"')
    try:
        call_command("migrate", verbosity=0)
        user = User.objects.create_superuser("bench", "bench@example.com", "pw")
        connections["default"].close()
        release = threading.Event()
        holders = [Holder(release) for _ in range(6)]
        for holder in holders:
            holder.start()
            holder.holding.wait(10)
        client = Client()
        client.force_login(user)
        connections["default"].close()
        rows = []
        for label, url in (
            ("dashboard page (HTML)", "/admin/django_poolguard/pool/"),
            ("refresh (JSON view)", "/admin/django_poolguard/pool/data/"),
        ):
            size = len(client.get(url).content)
            p50, p95 = timed(lambda url=url: client.get(url), rounds)
            rows.append((label, size, p50, p95))
        release.set()
        for holder in holders:
            holder.join(10)
        return rows
    finally:
        connections.close_all()
        close_all()
        from django_poolguard.runtime import get_runtime

        get_runtime().watchdog.stop()
        close_all()
        with psycopg.connect(**admin_params, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    sections = [
        ("Rendering the body (no database)", bench_rendering(args.rounds)),
        ("End to end on PostgreSQL (6 connections held, 1 process)", bench_end_to_end(args.rounds)),
    ]
    print(f"django {django.get_version()}, python {sys.version.split()[0]}, {args.rounds} rounds each")
    for title, rows in sections:
        print()
        if args.markdown:
            print(f"### {title}\n")
            print("| what | response size | p50 | p95 |")
            print("|---|---:|---:|---:|")
            for label, size, p50, p95 in rows:
                print(f"| {label} | {size / 1024:.0f} KiB | {p50:.1f} ms | {p95:.1f} ms |")
        else:
            print(title)
            for label, size, p50, p95 in rows:
                print(f"  {label:<70} {size / 1024:6.0f} KiB  p50 {p50:7.1f} ms  p95 {p95:7.1f} ms")


if __name__ == "__main__":
    main()
