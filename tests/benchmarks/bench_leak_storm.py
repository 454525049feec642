"""A dead-thread leak storm: Django's own pool vs poolguard.

One thread per second runs a query and exits without closing its connection (a thread /
thread-pool leak) against a pool of ``max_size=5``, for 60 s. Meanwhile the main
thread runs a query every 100 ms and returns its connection properly, as a request would.
Before the storm, each process replays the three-dead-threads reproduction on a separate ``max_size=3``
pool: three threads query and exit, then a fourth query. Two configurations of the same code,
each in its own process:

  native     django.db.backends.postgresql with OPTIONS["pool"] (max_size=5, timeout=1)
  poolguard  django_poolguard.backends.postgresql, same pool options, default MONITOR_INTERVAL (1 s)

Reported per configuration: the fraction of main-thread queries served (of those attempted,
and of those scheduled: a failed checkout costs the pool timeout, so a dead pool is attempted
less often), the time to the first failure, the outage time (sum of the gaps that started with
a failed query), main-thread query latency, and for poolguard the reclaims, the log lines and
the LeakEvent row the storm left.
poolguard writes its LeakEvents to a scratch database (created, migrated and dropped here).

    python tests/benchmarks/bench_leak_storm.py                  # 60 s per configuration
    python tests/benchmarks/bench_leak_storm.py --seconds 15     # shorter
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

CONFIGS = ("native", "poolguard")
SCRATCH_DB = "poolguard_bench_leak_storm"


class CountingHandler(logging.Handler):
    """Counts poolguard's log lines by their first words instead of printing 60 stacks."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}
        self.first: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        key = f"{record.levelname} {' '.join(message.split()[:3])}"
        self.counts[key] = self.counts.get(key, 0) + 1
        self.first.setdefault(key, message.splitlines()[0])


def configure(config: str, args: argparse.Namespace) -> CountingHandler:
    import django
    from django.conf import settings

    from django_poolguard.testing import database_settings

    connection = {**database_settings(), "NAME": SCRATCH_DB}
    pool = {"min_size": 0, "max_size": args.max_size, "timeout": args.timeout}
    options: dict[str, Any] = {"pool": pool, "application_name": f"bench_leak_storm-{config}"}
    engine = "django.db.backends.postgresql"
    apps: list[str] = []
    if config == "poolguard":
        engine = "django_poolguard.backends.postgresql"
        options["poolguard"] = {"leak_threshold": 30}
        apps = ["django_poolguard"]
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench",
        INSTALLED_APPS=apps,
        DATABASES={
            "default": {"ENGINE": engine, **connection, "OPTIONS": options},
            "three": {
                "ENGINE": engine,
                **connection,
                "OPTIONS": {**options, "pool": {"min_size": 0, "max_size": 3, "timeout": 2}},
            },
        },
        POOLGUARD={
            "PUBLISH": None,
            "WORKLOADS": {"web": "default"},
            "MONITOR_INTERVAL": args.monitor_interval,
        },
        USE_TZ=True,
        LOGGING_CONFIG=None,
    )
    django.setup()
    handler = CountingHandler()
    logger = logging.getLogger("django_poolguard")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    if config == "poolguard":
        from django.core.management import call_command
        from django.db import connections

        call_command("migrate", "django_poolguard", verbosity=0)
        connections["default"].close()
    return handler


def leak_one_connection(failures: list[str], alias: str = "default") -> None:
    """The leaking code path: one query, no close, thread ends."""
    from django.db import connections

    try:
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:
        failures.append(type(exc).__name__)


def three_dead_threads() -> dict[str, Any]:
    """Three dead threads: three threads query and exit on a max_size=3 pool; then a 4th query."""
    from django.db import connections

    failures: list[str] = []
    for n in range(3):
        thread = threading.Thread(target=leak_one_connection, args=(failures, "three"), name=f"dead-{n}")
        thread.start()
        thread.join()
    began = time.monotonic()
    try:
        with connections["three"].cursor() as cursor:
            cursor.execute("SELECT 1")
        outcome = "served"
    except Exception as exc:
        outcome = type(exc).__name__
    finally:
        connections["three"].close()
    return {"fourth_query": outcome, "after_ms": round((time.monotonic() - began) * 1000, 1)}


def run_one(config: str, args: argparse.Namespace) -> dict[str, Any]:
    handler = configure(config, args)
    from django.db import connections

    three = three_dead_threads()

    leak_failures: list[str] = []
    attempts: list[tuple[float, bool, float]] = []  # (start offset, served, latency)
    start = time.monotonic()
    next_leak = start
    next_query = start
    leaks = 0
    while (now := time.monotonic()) < start + args.seconds:
        if now >= next_leak:
            threading.Thread(
                target=leak_one_connection, args=(leak_failures,), name=f"leaker-{leaks}"
            ).start()
            leaks += 1
            next_leak += 1.0
        if now >= next_query:
            began = time.monotonic()
            try:
                with connections["default"].cursor() as cursor:
                    cursor.execute("SELECT 1")
                served = True
            except Exception:
                served = False
            finally:
                try:
                    connections["default"].close()
                except Exception:
                    pass
            attempts.append((began - start, served, time.monotonic() - began))
            next_query = max(next_query + args.query_every, time.monotonic())
        time.sleep(max(0.0, min(next_leak, next_query) - time.monotonic()))

    end = args.seconds
    outage = 0.0
    for index, (offset, served, _) in enumerate(attempts):
        if not served:
            following = attempts[index + 1][0] if index + 1 < len(attempts) else end
            outage += following - offset
    served_latencies = sorted(latency for _, ok, latency in attempts if ok)
    first_failure = next((offset for offset, ok, _ in attempts if not ok), None)
    result: dict[str, Any] = {
        "config": config,
        "seconds": args.seconds,
        "leaking_threads": leaks,
        "leaking_threads_failed": len(leak_failures),
        "queries": len(attempts),
        "served": sum(1 for _, ok, _ in attempts if ok),
        "first_failure_s": None if first_failure is None else round(first_failure, 1),
        "outage_s": round(outage, 1),
        "latency_ms_p50": _pct(served_latencies, 50),
        "latency_ms_p99": _pct(served_latencies, 99),
        "latency_ms_max": round(served_latencies[-1] * 1000, 1) if served_latencies else None,
        "log": handler.counts,
        "three_dead_threads": three,
    }
    if config == "poolguard":
        from django_poolguard import snapshot
        from django_poolguard.models import LeakEvent
        from django_poolguard.runtime import get_runtime
        from django_poolguard.watchdog import leak_events

        get_runtime().watchdog.run_once(force=True)
        leak_events.flush()
        state = snapshot(with_checkouts=False)["default"]
        three["reclaimed"] = snapshot(with_checkouts=False)["three"]["reclaimed_total"]
        result["reclaimed_total"] = state["reclaimed_total"]
        result["reclaimed_by_reason"] = state["reclaimed_by_reason"]
        result["in_use_at_end"] = state["in_use"]
        result["leak_events"] = [
            {"kind": e.kind, "count": e.count, "where": e.stack.splitlines()[0] if e.stack else ""}
            for e in LeakEvent.objects.filter(alias="default")
        ]
        result["first_reclaim_log"] = next(
            (line for key, line in handler.first.items() if "Reclaimed" in key), None
        )
        connections["default"].close()
    return result


def _pct(ordered: list[float], p: int) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, (len(ordered) * p + 99) // 100 - 1)] * 1000, 2)


def _admin(sql: str) -> None:
    import psycopg

    from django_poolguard.testing import database_settings

    s = database_settings()
    with psycopg.connect(
        host=s["HOST"],
        port=s["PORT"] or None,
        user=s["USER"],
        password=s["PASSWORD"] or None,
        dbname="postgres",
        autocommit=True,
    ) as conn:
        conn.execute(sql)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the storm per configuration")
    parser.add_argument("--max-size", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=1.0, help="pool timeout (s) of every checkout")
    parser.add_argument("--query-every", type=float, default=0.1, help="s between main-thread queries")
    parser.add_argument("--monitor-interval", type=float, default=1.0, help="POOLGUARD['MONITOR_INTERVAL']")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--run-one", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.run_one:
        print(json.dumps(run_one(args.run_one, args)))
        return

    _admin(f'DROP DATABASE IF EXISTS "{SCRATCH_DB}" WITH (FORCE)')
    _admin(f'CREATE DATABASE "{SCRATCH_DB}"')
    results = []
    try:
        for config in args.configs:
            print(f"running {config} for {args.seconds:.0f} s ...", file=sys.stderr)
            command = [sys.executable, __file__, "--run-one", config, *sys.argv[1:]]
            out = subprocess.run(command, capture_output=True, text=True, check=False, env=os.environ)
            if out.returncode != 0:
                sys.exit(f"{config} failed:\n{out.stderr}")
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{SCRATCH_DB}" WITH (FORCE)')

    print(
        f"\nLeak storm: 1 thread/s leaks a connection for {args.seconds:.0f} s, pool max_size={args.max_size}, "
        f"timeout={args.timeout} s; the main thread queries every {args.query_every * 1000:.0f} ms.\n"
    )
    scheduled = round(args.seconds / args.query_every)
    print(
        f"| configuration | served / attempted | served / scheduled ({scheduled}) | time to first failure "
        "| outage | latency p50 / p99 / max (served) | leaking threads that failed |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        share = r["served"] / r["queries"] if r["queries"] else 0.0
        first = "never" if r["first_failure_s"] is None else f"{r['first_failure_s']} s"
        latency = f"{r['latency_ms_p50']} / {r['latency_ms_p99']} / {r['latency_ms_max']} ms"
        print(
            f"| {r['config']} | {r['served']}/{r['queries']} ({share:.1%}) "
            f"| {min(1.0, r['served'] / scheduled):.1%} | {first} | {r['outage_s']} s "
            f"| {latency} | {r['leaking_threads_failed']}/{r['leaking_threads']} |"
        )
    print("\nThree threads query and exit on a max_size=3 pool (timeout 2 s); then a fourth query:\n")
    print("| configuration | fourth query | after |")
    print("|---|---|---|")
    for r in results:
        three = r["three_dead_threads"]
        print(f"| {r['config']} | {three['fourth_query']} | {three['after_ms']} ms |")
    for r in results:
        if r["config"] == "poolguard":
            print(
                f"\npoolguard: reclaimed {r['reclaimed_total']} connections {r['reclaimed_by_reason']}, "
                f"{r['in_use_at_end']} in use at the end; log lines {r['log']}; LeakEvent rows {r['leak_events']}"
            )
            print(f"first reclaim log line: {r['first_reclaim_log']}")


if __name__ == "__main__":
    main()
