"""The spike of seed 000, scaled to a 2-core machine: fail fast vs queue forever.

A pool of 10 connections, requests that hold theirs 50 ms (``SELECT pg_sleep(0.05)``), so
capacity = 10 / 0.05 = 200 req/s. The offered load is 3x capacity (600 req/s) for 20 s, with
a 10 s slow query holding one connection in the middle; before and after, 0.5x capacity.
Three configurations of the same Django site:

  native     Django's own pool at its defaults (timeout 30 s, unbounded queue), no middleware
  no-pool    Django's backend without a pool: one new connection per request
  poolguard  this backend, timeout=2, max_waiting=10, PoolGuardMiddleware (503 + Retry-After)

Method (stated in docs/benchmarks/spike.md): each configuration runs in its own process. Django's
real WSGI handler serves the requests in-process on a fixed pool of server threads (32, like
gunicorn with 2 workers x 16 threads), fed by an open-loop generator that submits requests at
their scheduled arrival times whether or not earlier ones finished; latency is measured from the
scheduled arrival, so queueing in front of the server threads counts. No HTTP: on 2 cores an
HTTP load generator would be the bottleneck long before 600 req/s.

    python tests/benchmarks/bench_spike.py                 # all three, 20 s spike, prints the table
    python tests/benchmarks/bench_spike.py --seconds 10 --configs poolguard
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

POOL_SIZE = 10
SERVICE = 0.05
CAPACITY = POOL_SIZE / SERVICE  # req/s
SPIKE_FACTOR = 3.0
BASE_FACTOR = 0.5
WARMUP = 3.0  # s at the base load before the spike
SLOW_QUERY = 10.0
CLIENT_TIMEOUT = 30.0  # s a client (or load balancer) waits before giving up
GOOD_LATENCY = 2.0  # s: a served request counts as goodput if answered this fast (an interactive budget)
NORMAL_LATENCY = 0.15  # s: "recovered" once every request is served this fast again
CONFIGS = ("native", "no-pool", "poolguard")


# --- one configuration, in its own process -------------------------------------------------


def configure(config: str) -> None:
    import django
    from django.conf import settings

    from django_poolguard.testing import database_settings

    connection = database_settings("postgres")
    options: dict[str, object] = {"application_name": f"bench_spike-{config}"}
    engine = "django.db.backends.postgresql"
    middleware: list[str] = []
    if config == "native":
        options["pool"] = {"min_size": POOL_SIZE, "max_size": POOL_SIZE}  # Django's defaults otherwise
    elif config == "poolguard":
        engine = "django_poolguard.backends.postgresql"
        options["pool"] = {
            "min_size": POOL_SIZE,
            "max_size": POOL_SIZE,
            "timeout": 2,
            "max_waiting": POOL_SIZE,
        }
        options["poolguard"] = {"leak_threshold": 60}
        middleware = ["django_poolguard.middleware.PoolGuardMiddleware"]
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=middleware,
        INSTALLED_APPS=["django_poolguard"] if config == "poolguard" else [],
        DATABASES={"default": {"ENGINE": engine, **connection, "OPTIONS": options}},
        POOLGUARD={"PUBLISH": None, "WORKLOADS": {"web": "default"}},
        LOGGING_CONFIG=None,
    )
    django.setup()


def view(request):  # type: ignore[no-untyped-def]
    from django.db import connection
    from django.http import HttpResponse

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(%s)", [SERVICE])
    return HttpResponse(b"ok")


def _urlpatterns() -> list[object]:
    from django.urls import path

    return [path("work/", view)]


def __getattr__(name: str) -> object:  # the URLconf is this module; build it only once Django is set up
    if name == "urlpatterns":
        return _urlpatterns()
    raise AttributeError(name)


def environ() -> dict[str, object]:
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/work/",
        "QUERY_STRING": "",
        "SERVER_NAME": "bench",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_ACCEPT": "application/json",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
    }


def run_config(config: str, spike_seconds: float, threads: int, cooldown: float) -> dict[str, object]:
    import logging

    logging.disable(logging.CRITICAL)  # Django logs every 500; the table counts them
    configure(config)
    from django.core.handlers.wsgi import WSGIHandler
    from django.db import connections

    handler = WSGIHandler()

    def serve() -> int:
        status: list[str] = []
        response = handler(environ(), lambda s, h, exc_info=None: status.append(s))
        try:
            for _ in response:
                pass
        finally:
            response.close()  # sends request_finished: Django returns/closes the connection
        return int(status[0].split()[0])

    # Warm the pools (and Python's caches) before measuring.
    with ThreadPoolExecutor(POOL_SIZE) as warm:
        list(warm.map(lambda _: serve(), range(POOL_SIZE * 3)))

    spike_start = WARMUP
    spike_end = WARMUP + spike_seconds
    arrivals: list[float] = []
    t, rate = 0.0, CAPACITY * BASE_FACTOR
    while t < spike_end + cooldown:
        rate = CAPACITY * (SPIKE_FACTOR if spike_start <= t < spike_end else BASE_FACTOR)
        arrivals.append(t)
        t += 1.0 / rate

    results: list[tuple[float, int, float]] = [(0.0, 0, 0.0)] * len(arrivals)
    sessions: list[int] = []
    begin = time.monotonic()

    def request(index: int, scheduled: float) -> None:
        try:
            status = serve()
        except Exception:
            status = -1
        results[index] = (scheduled, status, time.monotonic() - begin - scheduled)

    slow: dict[str, float] = {}

    def slow_query() -> None:
        # The 10 s query runs on the same pool as the requests, retried until it gets a connection.
        time.sleep(max(0.0, begin + spike_start + spike_seconds / 2 - SLOW_QUERY / 2 - time.monotonic()))
        while True:
            try:
                with connections["default"].cursor() as cursor:
                    slow["started"] = time.monotonic() - begin
                    cursor.execute("SELECT pg_sleep(%s)", [SLOW_QUERY])
                slow["ended"] = time.monotonic() - begin
                return
            except Exception:
                time.sleep(0.01)
            finally:
                connections["default"].close()

    def count_sessions(stop: threading.Event) -> None:
        import psycopg

        settings_dict = connections["default"].settings_dict
        with psycopg.connect(
            dbname=settings_dict["NAME"],
            user=settings_dict["USER"] or None,
            host=settings_dict["HOST"] or None,
            port=settings_dict["PORT"] or None,
            password=settings_dict["PASSWORD"] or None,
            autocommit=True,
        ) as conn:
            while not stop.is_set():
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                    [f"bench_spike-{config}"],
                ).fetchone()
                sessions.append(int(row[0]) if row else 0)
                stop.wait(0.25)

    stop = threading.Event()
    watcher = threading.Thread(target=count_sessions, args=(stop,), daemon=True)
    watcher.start()
    slow_thread = threading.Thread(target=slow_query, daemon=True)
    slow_thread.start()
    lag = 0.0
    with ThreadPoolExecutor(threads, thread_name_prefix="server") as server:
        for index, scheduled in enumerate(arrivals):
            delay = begin + scheduled - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                lag = max(lag, -delay)
            server.submit(request, index, scheduled)
    slow_thread.join()
    stop.set()
    watcher.join()
    summary = summarize(config, results, spike_start, spike_end, cooldown, slow, sessions, lag)
    if config == "poolguard":
        from django_poolguard.engine.pool import get_pool

        # The last 4,096 hold times, without the 10 s slow query: what one request really holds.
        held = [h for h in get_pool("default").ledger.held_samples() if h < 1.0]
        summary["hold_mean_ms"] = round(sum(held) / len(held) * 1000, 2)
    summary["load_average"] = os.getloadavg()[0]
    return summary


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def summarize(
    config: str,
    results: list[tuple[float, int, float]],
    spike_start: float,
    spike_end: float,
    cooldown: float,
    slow: dict[str, float],
    sessions: list[int],
    lag: float,
) -> dict[str, object]:
    spike = [r for r in results if spike_start <= r[0] < spike_end]
    in_time = [r for r in results if r[1] == 200 and r[2] <= CLIENT_TIMEOUT]
    served_during_spike = [r for r in in_time if spike_start <= r[0] + r[2] < spike_end]
    good_during_spike = [r for r in served_during_spike if r[2] <= GOOD_LATENCY]
    served = [r[2] for r in spike if r[1] == 200]
    shed = [r[2] for r in spike if r[1] == 503]
    other_5xx = [r for r in results if (r[1] >= 500 and r[1] != 503) or r[1] == -1]
    timeouts = [r for r in results if r[2] > CLIENT_TIMEOUT]
    after = [r for r in results if r[0] >= spike_end]
    recovery = recovery_time(after, spike_end, cooldown)
    late = [r for r in after if r[1] != 200 or r[2] > NORMAL_LATENCY]
    duration = spike_end - spike_start
    return {
        "config": config,
        "spike_seconds": duration,
        "offered_rps": len(spike) / duration,
        "throughput_rps": len(served_during_spike) / duration,
        "throughput_ratio": len(served_during_spike) / duration / CAPACITY,
        "goodput_rps": len(good_during_spike) / duration,
        "goodput_ratio": len(good_during_spike) / duration / CAPACITY,
        "served": len(served),
        "shed": len(shed),
        "served_p50_ms": _ms(percentile(served, 50)),
        "served_p99_ms": _ms(percentile(served, 99)),
        "served_max_ms": _ms(max(served, default=None)),
        "shed_p99_ms": _ms(percentile(shed, 99)),
        "other_5xx": len(other_5xx),
        "client_timeouts": len(timeouts),
        "recovery_s": None if recovery is None else round(recovery, 2),
        "after_spike_not_normal": {
            "failed": sum(1 for r in late if r[1] != 200),
            "slower_than_normal": sum(1 for r in late if r[1] == 200),
            "last_at_s": round(max((r[0] for r in late), default=spike_end) - spike_end, 2),
        },
        "cooldown_s": cooldown,
        "slow_query": {k: round(v, 2) for k, v in slow.items()},
        "peak_sessions": max(sessions, default=0),
        "generator_max_lag_ms": round(lag * 1000, 1),
    }


def recovery_time(after: list[tuple[float, int, float]], spike_end: float, cooldown: float) -> float | None:
    """Seconds from the end of the spike to the first 1 s window (by arrival) from which on every
    window is normal: no request failed or shed, and its p99 latency is at most NORMAL_LATENCY.
    ``None`` when the cool-down never got there. A lone outlier (a GC pause, another process
    taking the CPU) does not count as "not recovered"; a queue or a failure does.
    """
    windows: list[list[tuple[float, int, float]]] = [[] for _ in range(int(cooldown))]
    for request in after:
        index = int(request[0] - spike_end)
        if 0 <= index < len(windows):
            windows[index].append(request)
    normal = [
        all(r[1] == 200 for r in window) and (percentile([r[2] for r in window], 99) or 0.0) <= NORMAL_LATENCY
        for window in windows
    ]
    for index in range(len(windows)):
        if all(normal[index:]):
            # Recovered when the last request that was not normal before that window arrived.
            before = [r for window in windows[:index] for r in window if r[1] != 200 or r[2] > NORMAL_LATENCY]
            return max((r[0] - spike_end for r in before), default=0.0)
    return None


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


# --- the driver -----------------------------------------------------------------------------


def table(rows: list[dict[str, object]]) -> str:
    def fmt(value: object, suffix: str = "") -> str:
        return "-" if value is None else f"{value}{suffix}"

    lines = [
        "| configuration | offered req/s | served / capacity | goodput (served ≤ 2 s) / capacity | served p50 | served p99 | served max | shed | shed p99 | 5xx other than 503 | client timeouts (> 30 s) | recovery after the spike | peak DB sessions | load avg (2 cores) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        recovery = row["recovery_s"]
        recovery_text = (
            f"> {row['cooldown_s']:.0f} s (not recovered)" if recovery is None else f"{recovery} s"
        )
        lines.append(
            f"| {row['config']} | {row['offered_rps']:.0f} | {row['throughput_ratio']:.2f} ({row['throughput_rps']:.0f} req/s) "
            f"| {row['goodput_ratio']:.2f} ({row['goodput_rps']:.0f} req/s) "
            f"| {fmt(row['served_p50_ms'], ' ms')} | {fmt(row['served_p99_ms'], ' ms')} | {fmt(row['served_max_ms'], ' ms')} "
            f"| {row['shed']} | {fmt(row['shed_p99_ms'], ' ms')} | {row['other_5xx']} | {row['client_timeouts']} "
            f"| {recovery_text} | {row['peak_sessions']} | {row['load_average']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the spike (default 20)")
    parser.add_argument(
        "--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ", ".join(CONFIGS)
    )
    parser.add_argument("--threads", type=int, default=32, help="server threads (default 32: 2 workers x 16)")
    parser.add_argument(
        "--cooldown", type=float, default=30.0, help="s of base load after the spike (default 30)"
    )
    parser.add_argument("--run", help=argparse.SUPPRESS)  # internal: run one configuration, print JSON
    args = parser.parse_args()
    if args.seconds <= 0 or args.threads <= 0 or args.cooldown <= 0:
        parser.error("--seconds, --threads and --cooldown must be positive")
    if args.run:
        print(json.dumps(run_config(args.run, args.seconds, args.threads, args.cooldown)))
        return
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        parser.error(f"--configs: unknown {sorted(unknown)}; choose from {', '.join(CONFIGS)}")
    rows = []
    for config in configs:
        command = [sys.executable, __file__, "--run", config, "--seconds", str(args.seconds),
                   "--threads", str(args.threads), "--cooldown", str(args.cooldown)]  # fmt: skip
        output = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=os.environ.copy())
        if output.returncode != 0:
            sys.exit(f"{config} failed:\n{output.stderr}")
        row = json.loads(output.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        rows.append(row)
    print()
    print(
        f"pool {POOL_SIZE}, service {SERVICE * 1000:.0f} ms, capacity {CAPACITY:.0f} req/s, spike {SPIKE_FACTOR:g}x "
        f"for {args.seconds:g} s, {args.threads} server threads, one {SLOW_QUERY:g} s query mid-spike"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
