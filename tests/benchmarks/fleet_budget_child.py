"""One process of bench_fleet_budget.py's fleet: a Django pool under steady query load.

    python tests/benchmarks/fleet_budget_child.py          (spec in BENCH_FLEET_BUDGET, JSON)
    python tests/benchmarks/fleet_budget_child.py migrate  (creates poolguard's tables, then exits)

The spec (written by the benchmark) names the engine, the database and role, the pool, the
alias's ``OPTIONS["poolguard"]``, ``POOLGUARD`` and ``CACHES``, the number of load threads and
the database time of each query. Each thread runs one "request" after another: a cursor, one
``SELECT pg_sleep(...)``, then ``connection.close()`` so the connection goes back to the pool,
as Django does at the end of a request.

Every ``report`` seconds it prints one JSON line: cumulative queries served, connection attempts
the server refused (the server's words "too many connections" / "remaining connection slots",
raised to a thread or logged by the pool's background connector), other failed requests (pool
timeouts), the pool's size and max_size, and the lease when the alias has a fleet budget.
SIGTERM is a graceful scale-in: the threads finish their request, the pool closes, and poolguard's
exit hook withdraws what the process published.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

#: The server's words for a refused connection: a role's CONNECTION LIMIT, max_connections.
REFUSALS = ("too many connections", "remaining connection slots")

stop = threading.Event()
# Guards the counters below: the load threads and the log handler add, the reporter reads.
lock = threading.Lock()
counts = {"ok": 0, "refused": 0, "errors": 0}
error_kinds: dict[str, int] = {}
error_examples: dict[str, str] = {}  # the first message of each kind, for the report


def refused(text: str) -> bool:
    return any(words in text for words in REFUSALS)


class RefusalCounter(logging.Handler):
    """Counts the refusals the pool's background connector (and poolguard) log instead of raising."""

    def emit(self, record: logging.LogRecord) -> None:
        if refused(record.getMessage()):
            with lock:
                counts["refused"] += 1


def configure(spec: dict[str, Any]) -> None:
    from django.conf import settings

    options: dict[str, Any] = {"pool": spec["pool"]}
    if spec["engine"] == "django_poolguard.backends.postgresql":
        options["poolguard"] = spec["poolguard"]
        apps = ["django_poolguard"]
    else:
        apps = []
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench",
        USE_TZ=True,
        INSTALLED_APPS=apps,
        DATABASES={"default": {"ENGINE": spec["engine"], **spec["database"], "OPTIONS": options}},
        CACHES=spec["caches"],
        POOLGUARD=spec["POOLGUARD"],
        LOGGING_CONFIG=None,
    )


def load(seconds: float) -> None:
    from django.db import connection

    while not stop.is_set():
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_sleep(%s)", [seconds])
            with lock:
                counts["ok"] += 1
        except Exception as error:  # every failure is counted, none stops the load
            with lock:
                if refused(str(error)):
                    counts["refused"] += 1
                else:
                    counts["errors"] += 1
                    kind = type(error).__name__
                    error_kinds[kind] = error_kinds.get(kind, 0) + 1
                    error_examples.setdefault(kind, " ".join(str(error).split())[:300])
            stop.wait(0.05)  # a failing request is not retried in a hot loop
        finally:
            connection.close()


def lease() -> dict[str, Any] | None:
    """The alias's lease as its published snapshot shows it (None: Django's engine, no budget)."""
    from django.conf import settings

    if not settings.INSTALLED_APPS:  # Django's own engine
        return None
    from django_poolguard.fleet.leases import lease_snapshot

    value = lease_snapshot("default")
    return dict(value) if value else None


def report(final: bool = False) -> None:
    from django.db import connections

    pool = connections["default"].pool
    stats = pool.get_stats() if pool is not None else {}
    with lock:
        line = {
            "pid": os.getpid(),
            "t": time.time(),
            **counts,
            "error_kinds": dict(error_kinds),
            "error_examples": dict(error_examples),
            "pool_size": stats.get("pool_size", 0),
            "max_size": pool.max_size if pool is not None else 0,
            "final": final,
        }
    line["lease"] = lease()
    print(json.dumps(line), flush=True)


def main() -> None:
    spec = json.loads(os.environ["BENCH_FLEET_BUDGET"])
    configure(spec)
    import django

    django.setup()
    if sys.argv[1:] == ["migrate"]:
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        return
    counter = RefusalCounter()
    for name in ("psycopg.pool", "django_poolguard"):
        logging.getLogger(name).addHandler(counter)
        logging.getLogger(name).propagate = False  # counted, not printed 24 times over
    # poolguard's own warnings go to this child's log file (stderr), each with the child's pid.
    written = logging.StreamHandler(sys.stderr)
    written.setLevel(logging.WARNING)
    written.setFormatter(logging.Formatter(f"%(asctime)s {os.getpid()} %(name)s %(levelname)s %(message)s"))
    logging.getLogger("django_poolguard").addHandler(written)
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    threads = [
        threading.Thread(target=load, args=(spec["query_seconds"],), name=f"load-{i}", daemon=True)
        for i in range(spec["threads"])
    ]
    for thread in threads:
        thread.start()
    while not stop.wait(spec["report"]):
        report()
    for thread in threads:
        thread.join(10)
    report(final=True)
    from django.db import connections

    connections["default"].close_pool()


if __name__ == "__main__":
    main()
