"""A scale-out onto a fully leased budget converges in about one heartbeat, not three: a process
that learns of a newcomer lacking its share shrinks at once and tells the store as its busy
connections come back, and a process short of its share asks again before its heartbeat. With a
5 s heartbeat the old keeper needed at least one more heartbeat for each of these steps; the
deadlines below are half a heartbeat."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connections

from django_poolguard.fleet import leases
from django_poolguard.fleet.lease_stores import DatabaseLeaseStore
from tests.fleet.test_fleet_budget import Holders, eventually

pytestmark = pytest.mark.django_db(transaction=True)

HEARTBEAT = 5.0  # PUBLISH_INTERVAL: long, so that waiting for a heartbeat cannot pass the deadlines
DEADLINE = 0.5 * HEARTBEAT  # what each step may take once the process knows (the old keeper: >= 1 heartbeat)


@pytest.fixture
def slow_heartbeat(settings: Any) -> Iterator[None]:
    settings.POOLGUARD = {**settings.POOLGUARD, "PUBLISH_INTERVAL": HEARTBEAT, "PUBLISH": None}
    yield
    leases.release_all()


def _key(alias: str) -> str:
    settings_dict = connections[alias].settings_dict
    host, port = settings_dict["HOST"] or "localhost", settings_dict["PORT"] or "5432"
    return f"web@{host}:{port}/{settings_dict['NAME']}"


@pytest.mark.timing
def test_a_busy_process_frees_its_surplus_soon_after_it_learns_of_a_newcomer(make_alias, slow_heartbeat):
    alias = make_alias(
        pool={"min_size": 0, "max_size": 4, "timeout": 10}, poolguard={"fleet_budget": 4, "workload": "web"}
    )
    holders = Holders(alias, 4)
    keeper = None
    try:
        eventually(lambda: holders.got == 4, "4 holders served: the whole budget is leased and busy")
        keeper = leases.keeper(alias)
        assert keeper is not None
        store, key, pool = keeper.store, keeper.key, keeper.pool
        assert store.exchange(key, "newcomer", 2, 0, 4, 60).lease == 0  # joins a full fleet with nothing
        # Its heartbeat tells the keeper (up to one interval: accepted); from then on it has half a
        # heartbeat to lower its pool and to tell the store as the busy connections come back.
        eventually(lambda: keeper.members == 2, "the keeper's heartbeat met the newcomer", 2 * HEARTBEAT)
        told = time.monotonic()
        holders.stop()  # the 4 busy connections come back: 2 are over the lease and close
        while (granted := store.exchange(key, "newcomer", 2, 0, 4, 60)).lease < 2:
            # The hard cap all along: the pool never counts more than the store left it.
            assert pool.get_stats()["pool_size"] + granted.lease <= 4
            assert time.monotonic() - told < DEADLINE, (
                f"the newcomer still has {granted.lease} of its share of 2 {DEADLINE} s after the "
                f"keeper learned of it (lease {keeper.lease}, limit {keeper.limit})"
            )
            time.sleep(0.1)
        assert pool.get_stats()["pool_size"] <= 2 and keeper.limit == 2
        assert holders.failed == 0
    finally:
        holders.stop()
        if keeper is not None:
            keeper.store.release(keeper.key, "newcomer")


@pytest.mark.timing
def test_a_process_short_of_its_share_asks_again_before_its_heartbeat(make_alias, slow_heartbeat):
    alias = make_alias(
        pool={"min_size": 0, "max_size": 4, "timeout": 15}, poolguard={"fleet_budget": 4, "workload": "web"}
    )
    store, key = DatabaseLeaseStore(alias), _key(alias)
    assert store.exchange(key, "incumbent", 4, 4, 4, 60).lease == 4  # another process holds it all
    holders = None
    try:
        holders = Holders(alias, 2)  # the first checkout takes the first lease: 0 of a full fleet
        eventually(lambda: (leases.lease_snapshot(alias) or {}).get("members") == 2, "joined")
        keeper = leases.keeper(alias)
        assert keeper is not None and keeper.key == key and keeper.limit == 0
        eventually(lambda: keeper.pool.waiting() == 2, "2 clients wait at a cap of 0")
        # The incumbent's keeper gives back down to its share of 2, as it does once it knows.
        assert store.exchange(key, "incumbent", 2, 2, 4, 60).lease == 2
        freed = time.monotonic()
        # The old keeper asked a full fleet again only at its heartbeat, 5 s after its first lease.
        eventually(lambda: holders.got == 2, f"both clients served within {DEADLINE} s", DEADLINE)
        assert time.monotonic() - freed < DEADLINE and keeper.limit == 2 and holders.failed == 0
        assert store.exchange(key, "incumbent", 2, 2, 4, 60).fleet_held == 4  # within the budget
    finally:
        if holders is not None:
            holders.stop()
        store.release(key, "incumbent")
