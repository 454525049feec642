"""Memory of the pool-time profile after 100,000 requests with 100,000 distinct raw paths.

Requests go through Django's handler and ``PoolGuardMiddleware`` (the test client), each one
querying once: 60 % to ``/items/<int:pk>/``, 30 % to ``/users/<slug:name>/orders/``, 10 % to
paths no pattern matches (404). Every raw path is new. ``tracemalloc`` measures, at
checkpoints, what poolguard's own code (``django_poolguard/*``) still holds after a full GC,
with the number of labels the profile keeps (three patterns and ``GET (no route)``).

    python tests/benchmarks/bench_profile_memory.py                    # 100,000 requests
    python tests/benchmarks/bench_profile_memory.py --requests 20000
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def item(request, pk):  # type: ignore[no-untyped-def]
    return _one()


def orders(request, name):  # type: ignore[no-untyped-def]
    return _one()


def _one():  # type: ignore[no-untyped-def]
    from django.db import connection
    from django.http import HttpResponse

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return HttpResponse("ok")


def configure() -> None:
    import django
    from django.conf import settings

    from django_poolguard.testing import database_settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=["django_poolguard"],
        MIDDLEWARE=["django_poolguard.middleware.PoolGuardMiddleware"],
        DATABASES={
            "default": {
                "ENGINE": "django_poolguard.backends.postgresql",
                **database_settings(),
                "NAME": "postgres",
                "OPTIONS": {"pool": {"min_size": 2, "max_size": 2, "timeout": 10}},
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


urlpatterns: list = []


def requests(client, first: int, count: int) -> None:  # type: ignore[no-untyped-def]
    from django.db import connection

    for n in range(first, first + count):
        kind = n % 10
        if kind < 6:
            client.get(f"/items/{n}/")
        elif kind < 9:
            client.get(f"/users/user-{n}/orders/")
        else:
            client.get(f"/nowhere/{n}/")
            connection.ensure_connection()  # a 404 page that still touches the database
        connection.close()  # what request_finished does in production


def measure(point: str, done: int) -> dict[str, object]:
    from django_poolguard.engine import profile
    from django_poolguard.engine.pool import get_pool

    gc.collect()
    snapshot = tracemalloc.take_snapshot()
    ours = snapshot.filter_traces([tracemalloc.Filter(True, "*django_poolguard*")])
    pool = get_pool("default")
    assert pool is not None
    return {
        "point": point,
        "requests": done,
        "labels": len(pool.ledger.profile),
        "keys": len(pool.ledger.profile._by_key) + len(profile._label_cache),
        "kib": round(sum(s.size for s in ours.statistics("filename")) / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=100_000)
    args = parser.parse_args()
    configure()
    from django.test import Client
    from django.urls import path

    urlpatterns.extend([path("items/<int:pk>/", item), path("users/<slug:name>/orders/", orders)])
    client = Client()
    requests(client, 10_000_000, 1000)  # warm-up: pool full, caches filled
    tracemalloc.start(1)
    rows = [measure("after warm-up", 0)]
    done = 0
    started = time.perf_counter()
    for fraction in (0.1, 0.5, 1.0):
        target = int(args.requests * fraction)
        requests(client, done, target - done)
        done = target
        rows.append(measure(f"after {done:,} requests", done))
    elapsed = time.perf_counter() - started
    gc.collect()
    ours = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, "*django_poolguard*")])
    largest = ours.statistics("lineno")[:5]
    tracemalloc.stop()
    from django_poolguard.engine.pool import get_pool

    pool = get_pool("default")
    assert pool is not None
    print(f"\n{done:,} requests, every raw path distinct, in {elapsed:.0f} s (under tracemalloc)\n")
    print("| point | profile labels | key caches | poolguard's memory (KiB) |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['point']} | {row['labels']} | {row['keys']} | {row['kib']} |")
    print("\npoolguard's largest allocations still held:")
    for stat in largest:
        print(f"  {stat.size / 1024:.1f} KiB in {stat.count} blocks at {stat.traceback[0]}")
    print()
    for row in pool.ledger.profile.rows():
        print(f"  {row['label']}: {row['checkouts']:,} checkouts, {row['held_s']:.2f} pool-seconds")


if __name__ == "__main__":
    main()
