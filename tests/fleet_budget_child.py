"""One process of a fleet under a budget: ``python -m tests.fleet_budget_child THREADS``.

Each of THREADS threads keeps checking out a connection of ``default`` (its pool under
``OPTIONS["poolguard"]["fleet_budget"]``, from ``tests.fleet_settings``), holding it a moment and
giving it back, so the process always wants more than its lease. It prints ``ready`` once its
threads run; closing its stdin makes it exit cleanly (releasing its lease), SIGKILL makes it
vanish as a crashed worker does.
"""

from __future__ import annotations

import os
import sys
import threading

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.fleet_settings")

stop = threading.Event()


def churn() -> None:
    from django.db import connections

    from django_poolguard.exceptions import PoolExhausted

    while not stop.is_set():
        try:
            with connections["default"].cursor() as cursor:
                cursor.execute("SELECT 1")
            stop.wait(0.2)
        except PoolExhausted:
            pass  # the lease is full: try again
        finally:
            connections["default"].close()


def main() -> None:
    import django

    django.setup()
    threads = [threading.Thread(target=churn, daemon=True) for _ in range(int(sys.argv[1]))]
    for thread in threads:
        thread.start()
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    stop.set()
    for thread in threads:
        thread.join(10)


if __name__ == "__main__":
    main()
