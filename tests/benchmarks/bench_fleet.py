"""What publishing and reading the fleet view cost.

    POOLGUARD_TEST_DB=bench_fleet python tests/benchmarks/bench_fleet.py [--processes 200]

Creates (and drops) its own database on the test server. Measures, with a pool of
max_size 10 holding 10 checkouts (the largest snapshot a process of that size publishes):

- the snapshot's size (JSON bytes, with and without the 15-minute history);
- ``publish_now()`` with PUBLISH="database" (side connection upsert + cleanup) and
  PUBLISH="cache" (Redis, when reachable): the watchdog's work per interval;
- ``collect.collect()`` reading N published processes (default 200), as poolstats and the
  admin do, in both modes.

Prints a Markdown table; results are recorded in docs/benchmarks/fleet.md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")


def timed(fn: Any, repeat: int) -> tuple[float, float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--processes", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()

    import django
    from django.conf import settings

    redis_up = True
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=0.5).close()
    except OSError:
        redis_up = False
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "fleet": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:6379/0",
            "KEY_PREFIX": f"bench-{os.getpid()}",
        },
    }
    settings.LOGGING = {"version": 1}
    django.setup()
    from django.core.management import call_command
    from django.db import connection, connections
    from django.test.utils import override_settings

    from django_poolguard.fleet import collect, publish

    settings.DATABASES["default"]["OPTIONS"]["pool"] = {"min_size": 0, "max_size": 10, "timeout": 5}
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    connection.close()  # migrate's connection goes back to the pool
    release = threading.Event()
    held = threading.Semaphore(0)

    def hold() -> None:
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT 1")
        held.release()
        release.wait()
        connections["default"].close()

    threads = [threading.Thread(target=hold, daemon=True) for _ in range(10)]
    for thread in threads:
        thread.start()
    for _ in threads:
        held.acquire()
    rows = []
    try:
        # 15 minutes of history: record 181 points as the watchdog would over 15 minutes.
        snapshot = publish.current_snapshot()
        assert snapshot is not None
        data = snapshot["aliases"]["default"]
        now = time.time()
        publish.history.clear()
        for step in range(publish.HISTORY_POINTS + 1):
            publish.history.record("default", data, now=now - 900 + step * 5)
        full = publish.current_snapshot()
        assert full is not None
        without = json.loads(json.dumps(full))
        without["aliases"]["default"].pop("history")
        rows.append(("snapshot size, 10 checkouts, no history", f"{len(json.dumps(without)):,} bytes", ""))
        rows.append(("snapshot size, with 15 min history", f"{len(json.dumps(full)):,} bytes", ""))

        modes = [("database", {})] + ([("cache", {"PUBLISH_CACHE": "fleet"})] if redis_up else [])
        for mode, extra in modes:
            guard = {**settings.POOLGUARD, "PUBLISH": mode, **extra}
            with override_settings(POOLGUARD=guard):
                median, p95 = timed(publish.publish_now, args.repeat)
                rows.append((f"publish_now(), PUBLISH={mode!r}", f"{median:.2f} ms", f"{p95:.2f} ms"))
                target = publish.store()
                assert target is not None
                fake = json.loads(json.dumps(full))
                for pid in range(1, args.processes):
                    fake["host"], fake["pid"] = "bench-host", pid
                    target.publish(fake)
                collect.collect()  # warm up: imports, first reads
                median, p95 = timed(lambda: collect.collect(history=False), max(5, args.repeat // 10))
                rows.append(
                    (
                        f"collect.collect(history=False), {args.processes} processes, {mode}",
                        f"{median:.1f} ms",
                        f"{p95:.1f} ms",
                    )
                )
                median, p95 = timed(collect.collect, max(5, args.repeat // 10))
                rows.append(
                    (
                        f"collect.collect() with history, {args.processes} processes, {mode}",
                        f"{median:.1f} ms",
                        f"{p95:.1f} ms",
                    )
                )
                if mode == "cache":
                    for pid in range(1, args.processes):
                        target.withdraw(f"bench-host:{pid}")
        started = time.perf_counter()
        call_command("poolstats", "--json", stdout=open(os.devnull, "w"))
        rows.append(
            ("poolstats --json in-process (database)", f"{(time.perf_counter() - started) * 1000:.1f} ms", "")
        )
    finally:
        release.set()
        for thread in threads:
            thread.join(5)
        from django_poolguard.engine.side_connection import close_all
        from django_poolguard.runtime import get_runtime

        get_runtime().watchdog.stop()
        close_all()
        connections["default"].close_pool()
        connection.creation.destroy_test_db(old_name, verbosity=0)

    print(
        f"Python {sys.version.split()[0]}, Django {django.get_version()}, {os.cpu_count()} CPUs; Redis {'up' if redis_up else 'down'}"
    )
    print()
    print("| what | median | p95 |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row[0]} | {row[1]} | {row[2]} |")


if __name__ == "__main__":
    main()
