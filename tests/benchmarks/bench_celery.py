"""Celery on a bounded worker pool: physical connections and throughput, and the web pool during a task storm.

Run from the repository root (needs PostgreSQL; Redis if it answers, else kombu's filesystem transport)::

    /work/venv/bin/python tests/benchmarks/bench_celery.py [--tasks 1000] [--storm 200] [--markdown]

1. ``--tasks`` short tasks (one ORM query each) on a real ``celery worker --pool=prefork -c 2`` with
   Celery's own Django fixup, first with Django's native engine and pool (the fixup closes the pool
   after every task), then with poolguard. Physical connections are counted by PostgreSQL itself
   (``pg_stat_database.sessions`` of a database used by nothing else) and as distinct backend pids.
2. The web pool during a task storm: this process plays the web tier (4 threads doing short
   checkouts on the ``default`` alias) and reports its acquire p50/p95/p99 from the ledger while
   idle, while a ``--pool=threads -c 4`` worker runs ``--storm`` slow tasks on the ``worker`` alias,
   and, for contrast, while the same slow work runs on the web alias inside this process.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
BENCH_DB = os.environ.get("POOLGUARD_BENCH_DB", "bench_poolguard_celery")
os.environ["POOLGUARD_DB_NAME"] = BENCH_DB

import django  # noqa: E402

django.setup()

import psycopg  # noqa: E402
from django.db import connections  # noqa: E402

from django_poolguard.engine.ledger import percentiles  # noqa: E402
from django_poolguard.engine.pool import get_pool  # noqa: E402
from tests.celery_app.worker import Worker  # noqa: E402

SLOW_TASK_SECONDS = 0.2
WEB_THREADS = 4


def admin_connection() -> psycopg.Connection[Any]:
    params = connections["default"].get_connection_params()
    params = {k: v for k, v in params.items() if k not in ("options", "application_name")}
    params["dbname"] = "postgres"
    return psycopg.connect(**params, autocommit=True)


def create_bench_database() -> None:
    with admin_connection() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{BENCH_DB}"')
    subprocess.run(
        [sys.executable, "-m", "django", "migrate", "--verbosity=0"],
        cwd=ROOT,
        env={**os.environ, "POOLGUARD_DB_NAME": BENCH_DB},
        check=True,
    )


def drop_bench_database() -> None:
    with admin_connection() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')


def sessions_opened() -> int:
    """Sessions ever established to the bench database (PostgreSQL 14+)."""
    with admin_connection() as conn:
        row = conn.execute("SELECT sessions FROM pg_stat_database WHERE datname = %s", [BENCH_DB]).fetchone()
    return int(row[0]) if row else 0


def short_tasks(engine: str, count: int) -> dict[str, Any]:
    env = {"POOLGUARD_BENCH_ENGINE": engine}
    with Worker(
        BENCH_DB, pool="prefork", concurrency=2, env=env, settings="tests.benchmarks.celery_settings"
    ) as worker:
        worker.run("whoami")  # both sides warm: imports done, first connection made
        before = sessions_opened()
        started = time.perf_counter()
        results = [worker.send("whoami") for _ in range(count)]
        rows = [r.get(timeout=300) for r in results]
        elapsed = time.perf_counter() - started
        after = sessions_opened()
        transport = worker.transport
    per_child: dict[int, set[int]] = defaultdict(set)
    for row in rows:
        per_child[row["pid"]].add(row["backend_pid"])
    return {
        "engine": engine,
        "transport": transport,
        "tasks": count,
        "seconds": elapsed,
        "tasks_per_s": count / elapsed,
        "sessions_opened": after - before,
        "distinct_backends_per_child": sorted(len(v) for v in per_child.values()),
    }


class WebLoad:
    """Threads doing what a request does: check out on ``default``, one short query, give back."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.requests = 0

    def run(self) -> None:
        conn = connections["default"]
        while not self.stop.is_set():
            with conn.cursor() as cursor:
                cursor.execute("SELECT 1")
            conn.close()
            self.requests += 1
            time.sleep(0.002)

    def measure(self, during: Any) -> dict[str, Any]:
        pool = get_pool("default")
        seq = pool.ledger.acquired_total if pool else 0
        threads = [threading.Thread(target=self.run, name=f"web-{i}") for i in range(WEB_THREADS)]
        self.stop.clear()
        for thread in threads:
            thread.start()
        started = time.perf_counter()
        try:
            during()
        finally:
            self.stop.set()
            for thread in threads:
                thread.join()
        elapsed = time.perf_counter() - started
        pool = get_pool("default")
        assert pool is not None
        samples, total = pool.ledger.samples_since("acquire", seq)  # the newest RING_SIZE of them
        return {"seconds": elapsed, "checkouts": total - seq, "acquire_ms": percentiles(samples)}


def storm(count: int) -> dict[str, Any]:
    web = WebLoad()
    out: dict[str, Any] = {"idle": web.measure(lambda: time.sleep(5))}
    with Worker(BENCH_DB, pool="threads", concurrency=4) as worker:

        def task_storm() -> None:
            results = [worker.send("sleep_in_database", SLOW_TASK_SECONDS) for _ in range(count)]
            for result in results:
                result.get(timeout=300)

        out["storm_on_worker_alias"] = web.measure(task_storm)

    def same_pool_storm() -> None:
        # The same slow work sharing the web alias's pool (background threads in the web process,
        # or tasks without the router): 8 at once against max_size 8.
        def slow(_: int) -> None:
            conn = connections["default"]
            with conn.cursor() as cursor:
                cursor.execute("SELECT pg_sleep(%s)", [SLOW_TASK_SECONDS])
            conn.close()

        with ThreadPoolExecutor(8) as executor:
            list(executor.map(slow, range(count)))

    out["storm_on_web_alias"] = web.measure(same_pool_storm)
    return out


def markdown(short: list[dict[str, Any]], storm_result: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        f"### {args.tasks} short tasks, prefork -c 2, Celery's Django fixup ({short[0]['transport']} broker)",
        "",
        "| engine | physical connections opened | distinct sessions per child | tasks/s |",
        "|---|---:|---|---:|",
    ]
    for row in short:
        name = "Django native pool" if row["engine"] == "native" else "poolguard"
        lines.append(
            f"| {name} | {row['sessions_opened']} | {', '.join(map(str, row['distinct_backends_per_child']))} "
            f"| {row['tasks_per_s']:.0f} |"
        )
    lines += [
        "",
        f"### Web alias acquire time while {args.storm} slow tasks ({SLOW_TASK_SECONDS} s of pg_sleep) run",
        "",
        "| phase | web checkouts | p50 ms | p95 ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    names = {
        "idle": "no tasks (5 s)",
        "storm_on_worker_alias": "storm on a threads -c 4 worker, worker alias",
        "storm_on_web_alias": "same work sharing the web pool (contrast)",
    }
    for key, label in names.items():
        row = storm_result[key]
        ms = row["acquire_ms"]
        lines.append(
            f"| {label} | {row['checkouts']} | {ms['p50']:.3f} | {ms['p95']:.3f} | {ms['p99']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--storm", type=int, default=200)
    parser.add_argument(
        "--markdown", action="store_true", help="print the tables for docs/benchmarks/celery.md"
    )
    args = parser.parse_args()
    create_bench_database()
    try:
        short = [short_tasks("native", args.tasks), short_tasks("poolguard", args.tasks)]
        for row in short:
            print(row, flush=True)
        storm_result = storm(args.storm)
        for key, row in storm_result.items():
            print(key, row, flush=True)
        if args.markdown:
            print()
            print(markdown(short, storm_result, args))
    finally:
        connections.close_all()
        from django_poolguard.engine.pool import close_all_pools

        close_all_pools()
        drop_bench_database()


if __name__ == "__main__":
    main()
