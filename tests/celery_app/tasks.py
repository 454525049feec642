"""Tasks the integration tests and the Celery benchmark run."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from django.db import connections

from django_poolguard import current_alias, snapshot
from django_poolguard.engine.context import process_role

from .app import app


def _session() -> dict[str, Any]:
    # Through the ORM, so the router picks the alias, then the session behind it.
    from tests.testapp.models import Item

    queryset = Item.objects.all()
    queryset.exists()
    with connections[queryset.db].cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid(), current_setting('application_name')")
        backend_pid, application_name = cursor.fetchone()
    return {
        "pid": os.getpid(),
        "thread": threading.current_thread().name,
        "alias": queryset.db,
        "current_alias": current_alias(),
        "backend_pid": backend_pid,
        "application_name": application_name,
    }


@app.task
def whoami() -> dict[str, Any]:
    """The process, alias and PostgreSQL session this task ran on."""
    return _session()


@app.task
def fail() -> None:
    """Query, then raise while still holding the connection."""
    session = _session()
    raise RuntimeError(f"failing on purpose in process {session['pid']}")


@app.task
def hold(seconds: float) -> dict[str, Any]:
    """Query, keep the connection for ``seconds``, and return this process's ledger as it is then."""
    session = _session()
    time.sleep(seconds)
    return {**session, "aliases": snapshot()}


@app.task
def pool_state(linger: float = 0.0) -> dict[str, Any]:
    """This process's pools, without touching the database; ``linger`` keeps the process busy
    so that tasks sent together land on different prefork children."""
    state = {"pid": os.getpid(), "role": process_role(), "aliases": snapshot()}
    time.sleep(linger)
    return state


@app.task
def sleep_in_database(seconds: float) -> int:
    """A slow task: ``pg_sleep`` on the worker alias."""
    with connections[current_alias()].cursor() as cursor:
        cursor.execute("SELECT pg_sleep(%s), pg_backend_pid()", [seconds])
        return int(cursor.fetchone()[1])


@app.task
def leave_transaction_open(name: str) -> int:
    """A buggy task: enters a transaction it never leaves, after writing a row."""
    from django.db import transaction

    from tests.testapp.models import Item

    transaction.atomic(using=current_alias()).__enter__()
    Item.objects.create(name=name)
    return os.getpid()


@app.task
def count_items(name: str) -> int:
    from tests.testapp.models import Item

    return Item.objects.filter(name=name).count()


@app.task
def leak_into_thread(seconds: float) -> int:
    """A buggy task: starts a thread that queries, keeps its connection for ``seconds``, and
    never closes it; the task itself returns at once."""
    started = threading.Event()

    def run() -> None:
        with connections["worker"].cursor() as cursor:
            cursor.execute("SELECT 1")
        started.set()
        time.sleep(seconds)

    threading.Thread(target=run, name="report-uploader", daemon=True).start()
    started.wait(10)
    return os.getpid()


@app.task
def priority_class() -> str:
    """The priority class the task's checkouts get (POOLGUARD["PRIORITIES"] by task name)."""
    from django_poolguard import current_priority

    return current_priority()
