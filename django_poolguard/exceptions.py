"""The errors poolguard raises, subclassing the ones Django users already catch."""

from __future__ import annotations

from django.db.utils import OperationalError
from psycopg_pool import PoolTimeout, TooManyRequests

__all__ = ["PoolExhausted", "PoolQueueFull"]


class PoolExhausted(OperationalError, PoolTimeout):
    """No connection could be had from an alias's pool: the wait timed out or the queue was full.

    The message names the pool state and the top holders. ``alias``, ``waited``
    and ``queue_full`` let the middleware and metrics act on it without parsing; ``priority`` is the
    refused checkout's class on an alias with a reserve (``None`` elsewhere).
    It is also the ``psycopg_pool.PoolTimeout`` Django's own pooled backend raises, so code
    written for that backend keeps catching it (Django's test suite does).
    """

    __module__ = "django_poolguard"

    def __init__(
        self, message: str, *, alias: str, waited: float, queue_full: bool, priority: str | None = None
    ) -> None:
        super().__init__(message)
        self.alias = alias
        self.waited = waited
        self.queue_full = queue_full
        self.priority = priority


class PoolQueueFull(PoolExhausted, TooManyRequests):
    """:class:`PoolExhausted` raised at once because ``max_waiting`` requests already wait;
    also the ``psycopg_pool.TooManyRequests`` Django's own pooled backend raises then.
    """

    __module__ = "django_poolguard.exceptions"
