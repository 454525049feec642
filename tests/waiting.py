"""A waiter for exhaustion tests: a thread that queues for a connection like a request would."""

from __future__ import annotations

from django.db import connections

from django_poolguard import PoolExhausted


def wait_for_connection(alias: str) -> None:
    """Queue for a connection on ``alias``; give it back at once, or give up when refused."""
    try:
        connections[alias].ensure_connection()
    except PoolExhausted:
        pass
    finally:
        connections[alias].close()
