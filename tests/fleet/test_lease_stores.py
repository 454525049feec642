"""The fleet budget's lease stores, on the real database table and a real Redis: the sum of live
leases never passes the budget, expiry (by the store's clock) frees a dead owner's lease, and a
release frees it at once."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings

from django_poolguard.fleet.lease_stores import (
    CacheLeaseStore,
    DatabaseLeaseStore,
    LeaseStore,
    StoreUnavailable,
    grant,
)
from tests.fleet_helpers import redis_url

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(params=["database", "cache"])
def store(request: Any, django_db_setup: Any, django_db_blocker: Any) -> Iterator[LeaseStore]:
    if request.param == "database":
        with django_db_blocker.unblock():
            yield DatabaseLeaseStore("default")
        return
    url = redis_url()
    if url is None:
        pytest.skip("no Redis at REDIS_URL")
    caches = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "leases": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": url,
            "KEY_PREFIX": f"poolguard-tests-{uuid.uuid4().hex[:8]}",
        },
    }
    with override_settings(CACHES=caches):
        yield CacheLeaseStore("leases")


def _key() -> str:
    return f"web@test-{uuid.uuid4().hex[:8]}:5432/db"


def test_the_grant_never_takes_back_what_an_owner_holds_under_its_live_lease():
    assert grant(want=10, hold=0, budget=8, others=5, previous=0) == 3
    assert grant(want=2, hold=4, budget=8, others=6, previous=4) == 4  # the others grew while it held 4
    assert grant(want=2, hold=4, budget=8, others=6, previous=0) == 2  # its lease expired: nothing kept
    assert grant(want=5, hold=0, budget=8, others=9, previous=0) == 0


def test_many_owners_at_once_never_lease_more_than_the_budget(store: LeaseStore):
    key, budget = _key(), 20
    grants: list[int] = []
    errors: list[BaseException] = []

    def take(index: int) -> None:
        try:
            grants.append(store.exchange(key, f"owner-{index}", 6, 0, budget, 30).lease)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert sum(grants) == budget and max(grants) <= 6, grants
    last = store.exchange(key, "late", 6, 0, budget, 30)
    assert last.lease == 0 and last.members == 13 and last.fleet_held == budget


def test_a_lease_not_renewed_expires_by_the_stores_clock(store: LeaseStore):
    key = _key()
    assert store.exchange(key, "dead", 10, 0, 10, 1.0).lease == 10
    assert store.exchange(key, "alive", 10, 0, 10, 30).lease == 0
    deadline = time.monotonic() + 15
    while (granted := store.exchange(key, "alive", 10, 0, 10, 30)).lease < 10:
        assert time.monotonic() < deadline, granted
        time.sleep(0.3)
    assert granted.members == 1 and granted.fleet_held == 10


def test_owners_below_their_share_are_counted_as_wanting(store: LeaseStore):
    key = _key()
    assert store.exchange(key, "borrower", 8, 0, 8, 30).wanting == 0
    joined = store.exchange(key, "newcomer", 4, 0, 8, 30)
    assert (joined.lease, joined.wanting) == (0, 0)  # the borrower wants nothing it lacks
    # The borrower learns the newcomer lacks its share of 4, gives back 4, the newcomer takes them.
    seen = store.exchange(key, "borrower", 4, 4, 8, 30)
    assert (seen.lease, seen.members, seen.wanting) == (4, 2, 4)
    assert store.exchange(key, "newcomer", 4, 0, 8, 30).lease == 4
    assert store.exchange(key, "borrower", 4, 4, 8, 30).wanting == 0
    # Someone asking for less than the share wants only that.
    assert store.exchange(key, "small", 1, 0, 9, 30).lease == 1
    assert store.exchange(key, "borrower", 4, 4, 9, 30).wanting == 0


def test_a_released_lease_is_free_at_once_and_renewal_keeps_what_is_held(store: LeaseStore):
    key = _key()
    assert store.exchange(key, "a", 6, 0, 8, 30).lease == 6
    assert store.exchange(key, "b", 6, 0, 8, 30).lease == 2
    # a asks for less but still holds 5: the store keeps 5, and b cannot take them.
    assert store.exchange(key, "a", 2, 5, 8, 30).lease == 5
    assert store.exchange(key, "b", 6, 2, 8, 30).lease == 3
    store.release(key, "a")
    again = store.exchange(key, "b", 6, 3, 8, 30)
    assert again.lease == 6 and again.members == 1


def test_a_missing_table_is_an_unavailable_store_naming_the_migration(django_db_setup, django_db_blocker):
    from django.db import connections

    with django_db_blocker.unblock():
        with connections["default"].cursor() as cursor:
            cursor.execute("ALTER TABLE poolguard_lease RENAME TO poolguard_lease_away")
        try:
            with pytest.raises(
                StoreUnavailable, match=r"manage\.py migrate django_poolguard --database default"
            ):
                DatabaseLeaseStore("default").exchange(_key(), "a", 1, 0, 4, 30)
        finally:
            with connections["default"].cursor() as cursor:
                cursor.execute("ALTER TABLE poolguard_lease_away RENAME TO poolguard_lease")
