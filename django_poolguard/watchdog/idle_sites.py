"""The watchdog's ``profile`` task: where the holders of this process's connections wait
between queries, for the pool-time profile's *holds connections idle* finding
(:func:`django_poolguard.engine.profile.sample_idle`). Does nothing with ``PROFILE`` off."""

from __future__ import annotations

from time import monotonic

from django_poolguard.conf import guard_settings
from django_poolguard.engine.pool import all_pools
from django_poolguard.engine.profile import sample_idle

TASK_NAME = "profile"


def sample() -> int:
    """Sample the idle holders of every pool of this process; returns the checkouts sampled."""
    if not guard_settings.PROFILE:
        return 0
    now = monotonic()
    return sum(sample_idle(pool.ledger.checkouts(), now) for pool in all_pools().values())


__all__ = ["TASK_NAME", "sample"]
