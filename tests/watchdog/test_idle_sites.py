"""The profile's watchdog task: where holders wait between queries, over every pool of the process."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from django.db import connections

from django_poolguard.engine.pool import get_pool
from django_poolguard.engine.profile import IDLE_SAMPLE_MIN
from django_poolguard.watchdog import idle_sites

pytestmark = pytest.mark.django_db(transaction=True)


def _holds_between_queries(alias: str, queried: threading.Event, release: threading.Event) -> None:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")
    queried.set()
    release.wait(10)  # the holder waits here, connection in hand, no query running
    connections[alias].close()


def _sampled_site(alias: str, settings: Any, profile: bool) -> tuple[int, str | None]:
    settings.POOLGUARD = {**settings.POOLGUARD, "PROFILE": profile}
    queried, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=_holds_between_queries, args=(alias, queried, release))
    holder.start()
    try:
        assert queried.wait(10)
        time.sleep(IDLE_SAMPLE_MIN * 2)
        pool = get_pool(alias)
        assert pool is not None
        (checkout,) = [c for c in pool.ledger.checkouts() if c.thread is holder]
        sampled = idle_sites.sample()
        return sampled, checkout.idle_site
    finally:
        release.set()
        holder.join()


def test_the_task_records_where_a_holder_waits(make_alias, settings):
    sampled, site = _sampled_site(make_alias(), settings, profile=True)
    assert sampled >= 1
    assert site is not None and "in _holds_between_queries" in site, site


def test_the_task_does_nothing_with_the_profile_off(make_alias, settings):
    sampled, site = _sampled_site(make_alias(), settings, profile=False)
    assert (sampled, site) == (0, None)
