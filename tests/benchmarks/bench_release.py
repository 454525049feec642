"""Transaction-scoped checkouts under a slow external call, on a real gunicorn.

One gunicorn worker (gthread, 64 threads), a pool of 6 connections, and a view that reads, calls
a local HTTP server that answers after 1 s, then writes, with no transaction around the call.
60 client threads loop on it for 30 s per configuration, one configuration after another:

  native       Django's own pool (timeout 5 s)
  request      poolguard, release="request": the connection is held for the whole request
  transaction  poolguard, release="transaction": given back between the read and the write

Printed: requests served per second, p50/p99 latency of the answered requests, 503s, 500s and other
errors. Loopback only; every process is stopped when the run ends.

    python tests/benchmarks/bench_release.py                      # the three, 30 s each
    python tests/benchmarks/bench_release.py --seconds 10 --configs transaction
"""

from __future__ import annotations

import argparse
import http.client
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.gunicorn_app.server import GunicornServer  # noqa: E402

CONFIGS = ("native", "request", "transaction")
POOL = 6
CLIENTS = 60
EXTERNAL_SECONDS = 1.0
CLIENT_TIMEOUT = 15.0
DATABASE = "poolguard_bench_release"


class SlowHandler(BaseHTTPRequestHandler):
    """The payment provider: answers after EXTERNAL_SECONDS."""

    def do_GET(self) -> None:
        time.sleep(EXTERNAL_SECONDS)
        body = b"paid\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class SlowServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


def prepare_database() -> None:
    import psycopg

    from django_poolguard.testing import database_settings

    keys = database_settings("postgres")
    params = {"host": keys["HOST"], "port": keys["PORT"], "user": keys["USER"], "password": keys["PASSWORD"]}
    with psycopg.connect(dbname=keys["NAME"], autocommit=True, **params) as admin:
        if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE]).fetchone():
            admin.execute(f'CREATE DATABASE "{DATABASE}"')
    with psycopg.connect(dbname=DATABASE, autocommit=True, **params) as db:
        db.execute("CREATE TABLE IF NOT EXISTS bench_release_orders (id bigserial PRIMARY KEY, cart int)")
        db.execute("CREATE INDEX IF NOT EXISTS bench_release_orders_cart ON bench_release_orders (cart)")
        db.execute("TRUNCATE bench_release_orders")


def load(port: int, seconds: float) -> dict[str, float]:
    """CLIENTS threads, each a closed loop of GETs for ``seconds``."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()  # guards latencies and statuses
    deadline = time.monotonic() + seconds

    def client() -> None:
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
                connection.request("GET", "/checkout/")
                response = connection.getresponse()
                response.read()
                status = response.status
                connection.close()
            except OSError:
                status = 0  # timed out or refused
            elapsed = time.monotonic() - started
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    latencies.append(elapsed)
            if status != 200:
                time.sleep(0.1)  # a client backs off a little after an error

    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + CLIENT_TIMEOUT + 5)
    wall = time.monotonic() - started
    latencies.sort()

    def pct(p: int) -> float:
        return latencies[min(len(latencies) - 1, len(latencies) * p // 100)] if latencies else 0.0

    ok = statuses.get(200, 0)
    return {
        "served_per_s": ok / wall,
        "served": ok,
        "p50_s": pct(50),
        "p99_s": pct(99),
        "shed_503": statuses.get(503, 0),
        "failed_500": statuses.get(500, 0),
        "errors": sum(n for status, n in statuses.items() if status not in (200, 500, 503)),
    }


def run(configs: list[str], seconds: float) -> dict[str, dict[str, float]]:
    prepare_database()
    external = SlowServer(("127.0.0.1", 0), SlowHandler)
    threading.Thread(target=external.serve_forever, daemon=True).start()
    results = {}
    try:
        for config in configs:
            env = {
                "POOLGUARD_BENCH_CONFIG": config,
                "POOLGUARD_BENCH_POOL": str(POOL),
                "POOLGUARD_BENCH_EXTERNAL": f"http://127.0.0.1:{external.server_address[1]}/",
                "POOLGUARD_GUNICORN_WORKERS": "1",
                "POOLGUARD_GUNICORN_THREADS": "64",
            }
            with GunicornServer(DATABASE, env=env, settings="tests.benchmarks.release_site") as server:
                results[config] = load(server.port, seconds)
            print(f"{config:12} done", file=sys.stderr)
    finally:
        external.shutdown()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    args = parser.parse_args()
    results = run(args.configs, args.seconds)
    print(
        f"pool {POOL}, {CLIENTS} clients, {args.seconds:.0f} s each, view: query + {EXTERNAL_SECONDS:.0f} s call + write"
    )
    print(
        f"{'config':12} {'req/s':>7} {'served':>7} {'p50 s':>7} {'p99 s':>7} {'503s':>6} {'500s':>6} {'errors':>7}"
    )
    for config, r in results.items():
        print(
            f"{config:12} {r['served_per_s']:7.1f} {r['served']:7.0f} {r['p50_s']:7.2f} {r['p99_s']:7.2f} "
            f"{r['shed_503']:6.0f} {r['failed_500']:6.0f} {r['errors']:7.0f}"
        )
    if "request" in results and "transaction" in results and results["request"]["served_per_s"]:
        print(
            "transaction / request: "
            f"{results['transaction']['served_per_s'] / results['request']['served_per_s']:.1f} x the req/s, "
            f"{results['transaction']['served'] / max(1, results['request']['served']):.1f} x the requests served"
        )


if __name__ == "__main__":
    main()
