"""One process of a test fleet: ``python -m tests.fleet_child ROLE ALIAS HOLDS``.

It holds HOLDS connections of ALIAS, each in its own thread inside
``hold_report_connection`` (the frame fleet views must name), publishes its snapshot,
prints ``ready`` and waits. Closing its stdin makes it exit cleanly (and withdraw);
SIGKILL makes it vanish without a word, as a crashed worker does.
"""

from __future__ import annotations

import os
import sys
import threading

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.fleet_settings")

release = threading.Event()


def hold_report_connection(alias: str, label: str, held: threading.Semaphore) -> None:
    from django.db import connections

    from django_poolguard.engine.context import checkout_context

    with checkout_context(label):
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT 1")
        held.release()
        release.wait()
        connections[alias].close()


def main() -> None:
    import django

    django.setup()
    from django_poolguard.engine.context import set_process_role
    from django_poolguard.fleet.publish import publish_now

    role, alias, holds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    set_process_role(role)
    held = threading.Semaphore(0)
    label = f"GET /report/{role}" if role == "web" else f"task reports.export[{role}]"
    threads = [
        threading.Thread(
            target=hold_report_connection, args=(alias, label, held), name=f"{role}-holder-{i}", daemon=True
        )
        for i in range(holds)
    ]
    for thread in threads:
        thread.start()
    for _ in threads:
        if not held.acquire(timeout=30):
            sys.exit("a holder never got its connection")
    if not publish_now():
        sys.exit("could not publish the snapshot")
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    release.set()
    for thread in threads:
        thread.join(5)


if __name__ == "__main__":
    main()
