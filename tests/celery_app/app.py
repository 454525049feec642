"""The Celery app the integration tests run in a real worker process (``celery -A tests.celery_app.app``).

Configured from the environment the test fixture sets (see :mod:`tests.celery_app.config`).
``POOLGUARD_CELERY_FIXUP=0`` starts it without Celery's Django fixup, so what returns connections
at task end is poolguard alone.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

from celery import Celery, signals

from .config import celery_config

WITH_FIXUP = os.environ.get("POOLGUARD_CELERY_FIXUP", "1") != "0"

app = Celery("poolguard_tests", include=["tests.celery_app.tasks"], **({} if WITH_FIXUP else {"fixups": []}))
app.conf.update(celery_config(os.environ))

if not WITH_FIXUP:
    import django

    django.setup()  # Celery's fixup would do it; without the fixup the app must


@signals.worker_init.connect(weak=False)
def open_pool_in_parent(**kwargs: object) -> None:
    """Use the worker alias in the main process before it forks, as a project's startup code
    might: children must not inherit this pool. Records the parent's session for the tests."""
    record = os.environ.get("POOLGUARD_CELERY_PARENT_FILE")
    if not record:
        return
    from django.db import connections

    with connections["worker"].cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend_pid = cursor.fetchone()[0]
    connections["worker"].close()  # back to the pool, which stays open in the parent
    with open(record, "w") as fh:
        json.dump({"pid": os.getpid(), "backend_pid": backend_pid}, fh)
