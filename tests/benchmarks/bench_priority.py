"""Priority admission under overload, on a real gunicorn: who gets the connections at 3x capacity.

One gunicorn worker with 32 threads serves the shop of ``priority_site.py`` with a pool of 10
(timeout 2 s, max_waiting 4). The traffic mixes three routes:

  20 %  critical  POST-like checkout: an INSERT and 10 ms in the database
  50 %  normal    a page: 100 ms in the database
  30 %  low       a report: 500 ms in the database

so a request holds a connection 0.202 s on average and capacity = 10 / 0.202 = 49.5 req/s.
Each configuration first gets a quiet phase (critical requests alone, 20 req/s for 5 s: the
unloaded latency), then 3x capacity for 30 s, arrivals drawn from a seeded Poisson process in an
open loop (a request is sent at its time whether or not earlier ones are answered), each over a
new loopback connection, latency measured from its scheduled time. Three configurations, one
after the other in this run:

  native      Django's own pool (same psycopg_pool arguments), no middleware: exhaustion is a 500
  poolguard   this backend and PoolGuardMiddleware, no priorities: exhaustion is a 503
  priorities  the same with POOLGUARD["PRIORITIES"] (checkout critical, reports:* low) and
              OPTIONS["poolguard"]["reserve"] = {"critical": 2, "normal": 1}

served = 200, shed = 503 (with Retry-After), failed = anything else (500, client timeout 10 s).
goodput = served req/s / capacity; "busy" = database time of the served requests / (pool x duration).

    python tests/benchmarks/bench_priority.py                  # about 2.5 minutes
    python tests/benchmarks/bench_priority.py --seconds 10 --configs priorities
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.benchmarks.priority_site import POOL_SIZE, SERVICE  # noqa: E402
from tests.gunicorn_app.server import GunicornServer, get  # noqa: E402

MIX = {"critical": 0.2, "normal": 0.5, "low": 0.3}
PATHS = {"critical": "/checkout/", "normal": "/browse/", "low": "/reports/export/"}
MEAN_SERVICE = sum(MIX[c] * SERVICE[c] for c in MIX)
CAPACITY = POOL_SIZE / MEAN_SERVICE  # req/s
LOAD_FACTOR = 3.0
QUIET_RATE, QUIET_SECONDS = 20.0, 5.0
CLIENT_TIMEOUT = 10.0
CONFIGS = ("native", "poolguard", "priorities")
THREADS = 32


@dataclass
class Outcome:
    served: list[float] = field(default_factory=list)  # latencies of 200s (s)
    shed: int = 0
    failed: int = 0
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.served) + self.shed + self.failed


async def request(port: int, path: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        status_line = await reader.readline()
        await reader.read()  # the rest, until the server closes
        parts = status_line.split()
        return parts[1].decode() if len(parts) > 1 else "no answer"
    finally:
        writer.close()


async def drive(
    port: int, rate: float, seconds: float, mix: dict[str, float], seed: int
) -> dict[str, Outcome]:
    """An open loop: Poisson arrivals at ``rate`` for ``seconds``, classes drawn from ``mix``."""
    rng = random.Random(seed)
    outcomes = {klass: Outcome() for klass in mix}
    classes, weights = list(mix), list(mix.values())
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks = []

    async def one(klass: str, due: float) -> None:
        outcome = outcomes[klass]
        try:
            status = await asyncio.wait_for(request(port, PATHS[klass]), CLIENT_TIMEOUT)
        except (TimeoutError, OSError) as exc:
            status = type(exc).__name__
        outcome.statuses[status] = outcome.statuses.get(status, 0) + 1
        if status == "200":
            outcome.served.append(loop.time() - due)
        elif status == "503":
            outcome.shed += 1
        else:
            outcome.failed += 1

    due = start
    while True:
        due += rng.expovariate(rate)
        if due - start >= seconds:
            break
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(rng.choices(classes, weights)[0], due)))
    await asyncio.gather(*tasks)
    return outcomes


def percentile(samples: list[float], p: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def prepare_database() -> None:
    import psycopg

    from django_poolguard.testing import database_url

    with psycopg.connect(database_url("postgres"), autocommit=True) as conn:
        conn.execute("CREATE UNLOGGED TABLE IF NOT EXISTS bench_priority_orders (id bigserial PRIMARY KEY)")
        conn.execute("TRUNCATE bench_priority_orders")


def run_config(config: str, seconds: float) -> dict[str, object]:
    env = {
        "BENCH_PRIORITY_CONFIG": config,
        "POOLGUARD_GUNICORN_WORKERS": "1",
        "POOLGUARD_GUNICORN_THREADS": str(THREADS),
        "POOLGUARD_GUNICORN_CONNECTIONS": str(THREADS),  # one client per thread; the rest wait in the backlog
    }
    with GunicornServer("postgres", env, settings="tests.benchmarks.priority_site") as server:
        quiet = asyncio.run(drive(server.port, QUIET_RATE, QUIET_SECONDS, {"critical": 1.0}, seed=1))
        started = time.monotonic()
        loaded = asyncio.run(drive(server.port, LOAD_FACTOR * CAPACITY, seconds, MIX, seed=2))
        elapsed = time.monotonic() - started
        pool_waits = json.loads(get(server.port, "/bench/acquire/")[2] or b"{}")
    served = sum(len(o.served) for o in loaded.values())
    busy = sum(len(loaded[c].served) * SERVICE[c] for c in loaded) / (POOL_SIZE * seconds)
    return {
        "config": config,
        "quiet_p99": percentile(quiet["critical"].served, 99),
        "loaded": loaded,
        "goodput": served / seconds / CAPACITY,
        "busy": busy,
        "elapsed": elapsed,
        "pool_waits": pool_waits,
        "load": os.getloadavg()[0],
    }


def print_table(results: list[dict[str, object]], seconds: float) -> None:
    print(
        f"pool {POOL_SIZE}, capacity {CAPACITY:.1f} req/s, offered {LOAD_FACTOR:.0f}x = "
        f"{LOAD_FACTOR * CAPACITY:.0f} req/s for {seconds:.0f} s\n"
    )
    print("| configuration | class | requests | served | shed (503) | failed | p50 ms | p99 ms |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for result in results:
        loaded: dict[str, Outcome] = result["loaded"]  # type: ignore[assignment]
        for klass in MIX:
            outcome = loaded[klass]
            n = outcome.total or 1
            print(
                f"| {result['config']} | {klass} | {outcome.total} | {len(outcome.served) / n:.1%} | "
                f"{outcome.shed / n:.1%} | {outcome.failed / n:.1%} | "
                f"{percentile(outcome.served, 50) * 1000:.0f} | {percentile(outcome.served, 99) * 1000:.0f} |"
            )
    print(
        "\n| configuration | critical p99 unloaded ms | critical p99 loaded / unloaded | goodput (served / capacity) "
        "| pool busy with served work | failures | load avg (2 cores) |"
    )
    print("|---|---:|---:|---:|---:|---|---:|")
    for result in results:
        loaded = result["loaded"]  # type: ignore[assignment]
        quiet = float(result["quiet_p99"])  # type: ignore[arg-type]
        ratio = percentile(loaded["critical"].served, 99) / quiet if quiet else float("nan")
        failures = {s: n for o in loaded.values() for s, n in o.statuses.items() if s not in ("200", "503")}
        print(
            f"| {result['config']} | {quiet * 1000:.0f} | {ratio:.2f} | {result['goodput']:.2f} | "
            f"{result['busy']:.0%} | {failures or 'none'} | {result['load']:.1f} |"
        )


def print_pool_waits(results: list[dict[str, object]]) -> None:
    rows = [r for r in results if r["pool_waits"]]
    if not rows:
        return
    print(
        "\nThe pool's own acquire times (ms, the last 1024 checkouts of each class), where priorities are on:\n"
    )
    print("| configuration | class | acquire p50 | p95 | p99 |")
    print("|---|---|---:|---:|---:|")
    for result in rows:
        for klass, values in result["pool_waits"].items():  # type: ignore[attr-defined]
            print(
                f"| {result['config']} | {klass} | {values['p50']:.1f} | {values['p95']:.1f} | {values['p99']:.1f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    args = parser.parse_args()
    prepare_database()
    results = []
    for config in args.configs:
        print(f"running {config} ...", file=sys.stderr)
        results.append(run_config(config, args.seconds))
    print_table(results, args.seconds)
    print_pool_waits(results)


if __name__ == "__main__":
    main()
