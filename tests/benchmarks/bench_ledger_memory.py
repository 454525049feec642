"""Memory after 100,000 checkouts: the ledger and its stacks are O(checked-out connections),
and the pool-time profile is O(PROFILE_TOP) labels, though every checkout has a label of its own.

Four threads make 100,000 checkouts in total on a poolguard pool (max_size=5), each with its
own request label (``GET /items/<n>``) and a query every 10th checkout, while the watchdog
scans every 100 ms. ``tracemalloc`` measures, at checkpoints, the memory still allocated by
poolguard's own code (``django_poolguard/*``) and by the whole process, after a full GC.
At the end five connections are left checked out, to show what a live checkout costs.

    python tests/benchmarks/bench_ledger_memory.py                 # 100,000 checkouts
    python tests/benchmarks/bench_ledger_memory.py --checkouts 20000
"""

from __future__ import annotations

import argparse
import gc
import sys
import threading
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

THREADS = 4


def configure() -> None:
    import django
    from django.conf import settings

    from django_poolguard.testing import database_settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench",
        INSTALLED_APPS=["django_poolguard"],
        DATABASES={
            "default": {
                "ENGINE": "django_poolguard.backends.postgresql",
                **database_settings(),
                "NAME": "postgres",
                "OPTIONS": {"pool": {"min_size": 5, "max_size": 5, "timeout": 10}},
            }
        },
        POOLGUARD={
            "PUBLISH": None,
            "WORKLOADS": {"web": "default"},
            "MONITOR_INTERVAL": 0.1,
            "PROFILE": True,
        },
        USE_TZ=True,
    )
    django.setup()


def checkouts(count: int, first: int) -> None:
    from django.db import connections

    from django_poolguard.engine.context import checkout_context

    wrapper = connections["default"]
    for n in range(first, first + count):
        with checkout_context(f"GET /items/{n}"):
            wrapper.ensure_connection()
            if n % 10 == 0:
                with wrapper.cursor() as cursor:
                    cursor.execute("SELECT 1")
            wrapper.close()


def measure(label: str, done: int) -> dict[str, float | int | str]:
    from django_poolguard.engine import profile, stacks
    from django_poolguard.engine.pool import get_pool
    from django_poolguard.watchdog import leaks

    gc.collect()
    snapshot = tracemalloc.take_snapshot()
    ours = snapshot.filter_traces([tracemalloc.Filter(True, "*django_poolguard*")])
    pool = get_pool("default")
    assert pool is not None
    return {
        "point": label,
        "checkouts": done,
        "ledger_entries": len(pool.ledger),
        "code_cache_entries": len(stacks._code_info),
        "reported_entries": sum(len(v) for v in leaks._reported.values()),
        "profile_labels": len(pool.ledger.profile),
        "profile_keys": len(pool.ledger.profile._by_key) + len(profile._label_cache),
        "poolguard_kib": round(sum(s.size for s in ours.statistics("filename")) / 1024, 1),
        "process_kib": round(tracemalloc.get_traced_memory()[0] / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkouts", type=int, default=100_000)
    args = parser.parse_args()
    configure()
    from django.db import connections

    from django_poolguard.engine.pool import get_pool

    checkouts(1000, 0)  # warm-up: pool full, caches of the code paths filled
    tracemalloc.start(1)
    rows = [measure("after warm-up", 0)]
    per_thread = args.checkouts // THREADS
    done = 0
    started = time.perf_counter()
    for fraction in (0.1, 0.5, 1.0):
        target = int(per_thread * fraction)
        batch = target - done // THREADS
        threads = [
            threading.Thread(target=checkouts, args=(batch, 10_000_000 * (i + 1) + done // THREADS))
            for i in range(THREADS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        done = target * THREADS
        rows.append(measure(f"after {done:,} checkouts", done))
    elapsed = time.perf_counter() - started

    # Five live checkouts (e.g. five leaks being reported): the ledger grows by five entries only.
    holders = []
    for i in range(5):
        ready = threading.Event()
        release = threading.Event()

        def hold(ready: threading.Event = ready, release: threading.Event = release) -> None:
            connections["default"].ensure_connection()
            ready.set()
            release.wait()
            connections["default"].close()

        thread = threading.Thread(target=hold, name=f"holder-{i}")
        thread.start()
        ready.wait()
        holders.append((thread, release))
    rows.append(measure("with 5 connections checked out", done))
    for thread, release in holders:
        release.set()
        thread.join()
    tracemalloc.stop()
    pool = get_pool("default")
    assert pool is not None

    print(
        f"\n{done:,} checkouts from {THREADS} threads in {elapsed:.1f} s "
        f"(under tracemalloc), {pool.ledger.acquired_total:,} acquired in total, pool max_size=5.\n"
    )
    print(
        "| point | ledger entries | code-object cache | profile labels | profile key caches "
        "| poolguard's memory (KiB) | process traced (KiB) |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['point']} | {row['ledger_entries']} | {row['code_cache_entries']} "
            f"| {row['profile_labels']} | {row['profile_keys']} "
            f"| {row['poolguard_kib']} | {row['process_kib']} |"
        )
    connections["default"].close()


if __name__ == "__main__":
    main()
