"""A waiter for exhaustion tests: a thread that queues for a connection like a request would."""

from __future__ import annotations

import threading
import time

from django.db import connections

from django_poolguard import PoolExhausted
from django_poolguard.engine.pool import get_pool


def wait_for_connection(alias: str) -> None:
    """Queue for a connection on ``alias``; give it back at once, or give up when refused."""
    try:
        connections[alias].ensure_connection()
    except PoolExhausted:
        pass
    finally:
        connections[alias].close()


def queue_waiters(alias: str, count: int, within: float = 15.0) -> list[threading.Thread]:
    """Start ``count`` threads queueing on ``alias``'s pool; return once all are queued."""
    waiters = [threading.Thread(target=wait_for_connection, args=(alias,), daemon=True) for _ in range(count)]
    for waiter in waiters:
        waiter.start()
    pool = get_pool(alias)
    assert pool is not None
    deadline = time.monotonic() + within
    while pool.waiting() < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return waiters
