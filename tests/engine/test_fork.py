"""A pool never crosses fork(): children get fresh pools and the parent's sessions survive."""

from __future__ import annotations

import multiprocessing
import os

import pytest
from django.db import connections

from django_poolguard.engine.pool import get_pool

pytestmark = pytest.mark.django_db(transaction=True)


def _backend_pid(alias: str) -> int:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def _child(alias: str, parent_pool_id: int, queue: multiprocessing.Queue) -> None:
    try:
        inherited = connections[alias].connection  # the forking thread's wrapper, as in gunicorn --preload
        pool = connections[alias].pool
        backend = _backend_pid(alias)
        queue.put(
            {
                "wrapper_connection_dropped": inherited is None,
                "fresh_pool": id(pool) != parent_pool_id and pool.pid == os.getpid(),
                "backend": backend,
            }
        )
        connections[alias].close()
    except BaseException as exc:  # pragma: no cover - reported to the parent
        queue.put({"error": repr(exc)})


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_forked_child_gets_a_fresh_pool_and_parent_keeps_its_session(make_alias):
    alias = make_alias(pool={"min_size": 0, "max_size": 2, "timeout": 3})
    parent_backend = _backend_pid(alias)  # checked out and kept across the fork
    parent_pool = get_pool(alias)

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child, args=(alias, id(parent_pool), queue))
    child.start()
    result = queue.get(timeout=30)
    child.join(30)

    assert "error" not in result, result
    assert result["wrapper_connection_dropped"]
    assert result["fresh_pool"]
    assert result["backend"] != parent_backend, "the child must open its own session"
    assert child.exitcode == 0
    # The child's exit did not terminate the parent's session.
    assert _backend_pid(alias) == parent_backend
    connections[alias].close()
