"""The errors poolguard raises, subclassing the ones Django users already catch."""

from __future__ import annotations

from django.db.utils import OperationalError

__all__ = ["PoolExhausted"]


class PoolExhausted(OperationalError):
    """No connection could be had from an alias's pool: the wait timed out or the queue was full.

    The message names the pool state and the top holders. ``alias``, ``waited``
    and ``queue_full`` let the middleware and metrics act on it without parsing.
    """

    __module__ = "django_poolguard"

    def __init__(self, message: str, *, alias: str, waited: float, queue_full: bool) -> None:
        super().__init__(message)
        self.alias = alias
        self.waited = waited
        self.queue_full = queue_full
