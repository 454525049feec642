"""Fleet-budget metrics from real budgeted pools: the lease each keeper holds, the budget, the
static-share fallback, a rebalance between two members of one workload, and the exposition
checked by a real ``promtool check metrics``."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connections
from prometheus_client import REGISTRY, generate_latest

from django_poolguard.engine.pool import discard_pool
from django_poolguard.fleet import leases
from django_poolguard.fleet.leases import lease_snapshot
from django_poolguard.fleet.schema import LeaseSnapshot
from django_poolguard.runtime import get_runtime

pytestmark = pytest.mark.django_db(transaction=True)

PROMTOOL = shutil.which("promtool")
LEASE_METRICS = ("poolguard_pool_lease", "poolguard_fleet_budget", "poolguard_lease_fallback")


def value(name: str, alias: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"alias": alias})


def use(alias: str) -> None:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")
    connections[alias].close()


def wait_for(alias: str, ready: Callable[[LeaseSnapshot], bool], seconds: float = 15.0) -> LeaseSnapshot:
    deadline = time.monotonic() + seconds
    while True:
        snapshot = lease_snapshot(alias)
        if snapshot is not None and ready(snapshot):
            return snapshot
        if time.monotonic() > deadline:
            pytest.fail(f"the lease of {alias} never got there: {snapshot}")
        time.sleep(0.05)


def export() -> None:
    get_runtime().exporter.export()


@pytest.fixture
def budgeted(make_alias: Callable[..., str], settings: Any) -> Iterator[Callable[..., str]]:
    """``budgeted(budget, workload=..., **poolguard)``: a used pool of max_size 6 under a fleet budget."""
    settings.POOLGUARD = {**settings.POOLGUARD, "PUBLISH_INTERVAL": 0.2}  # the keepers' heartbeat

    def make(budget: int, workload: str = "leased", **poolguard: Any) -> str:
        alias = make_alias(
            pool={"min_size": 0, "max_size": 6, "timeout": 2},
            poolguard={"workload": workload, "fleet_budget": budget, **poolguard},
        )
        use(alias)
        return alias

    yield make
    leases.release_all()  # before make_alias removes the aliases their keepers renew


def test_a_budgeted_pool_exports_its_lease_and_budget(budgeted: Callable[..., str], make_alias: Any) -> None:
    alias = budgeted(4)
    plain = make_alias()
    use(plain)
    lease = wait_for(alias, lambda s: s["lease"] == 4 and s["members"] == 1)
    export()
    assert value("poolguard_pool_lease", alias) == 4 == lease["lease"]
    assert value("poolguard_fleet_budget", alias) == 4
    assert value("poolguard_lease_fallback", alias) == 0
    # An alias without a budget has no lease series at all, so sums over aliases count budgeted ones.
    assert all(value(name, plain) is None for name in LEASE_METRICS)

    # The pool closed: its series go with it.
    connections[alias].close()
    pool = discard_pool(alias)
    assert pool is not None
    pool.close(timeout=1)
    export()
    assert all(value(name, alias) is None for name in LEASE_METRICS)


def test_two_members_of_a_workload_split_the_budget(budgeted: Callable[..., str]) -> None:
    """Scale-out in one process: a second keeper of the same workload joins, and at the next
    heartbeats both hold half, never more than the budget together."""
    first = budgeted(6, workload="split")
    wait_for(first, lambda s: s["lease"] == 6)
    second = budgeted(6, workload="split")
    wait_for(second, lambda s: s["lease"] == 3 and s["members"] == 2)
    wait_for(first, lambda s: s["lease"] == 3 and s["members"] == 2)
    export()
    assert value("poolguard_pool_lease", first) == value("poolguard_pool_lease", second) == 3
    assert value("poolguard_fleet_budget", first) == value("poolguard_fleet_budget", second) == 6
    assert lease_snapshot(first)["capped"] == "capped at 3 by fleet budget 6 over 2 processes"  # type: ignore[index]


def test_an_unreachable_store_is_the_static_share(budgeted: Callable[..., str], settings: Any) -> None:
    settings.CACHES = {
        **settings.CACHES,
        # Nothing listens on port 1: every exchange fails, as with Redis down.
        "gone": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
        },
    }
    settings.POOLGUARD = {**settings.POOLGUARD, "DEPLOYMENT": {"stranded": {"instances": 2, "processes": 1}}}
    alias = budgeted(6, workload="stranded", lease_store="cache", lease_cache="gone")
    lease = wait_for(alias, lambda s: s["fallback"])
    assert lease["lease"] == 3  # 6 over DEPLOYMENT's 2 processes
    export()
    assert value("poolguard_lease_fallback", alias) == 1
    assert value("poolguard_pool_lease", alias) == 3
    assert value("poolguard_fleet_budget", alias) == 6


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not found: `apt-get install -y prometheus`")
def test_promtool_accepts_the_exposition_with_leases(budgeted: Callable[..., str]) -> None:
    alias = budgeted(4)
    wait_for(alias, lambda s: s["lease"] == 4)
    export()
    exposition = generate_latest(REGISTRY)
    for name in LEASE_METRICS:
        assert f"# TYPE {name} gauge".encode() in exposition
        assert f'{name}{{alias="{alias}"}}'.encode() in exposition
    assert PROMTOOL is not None
    result = subprocess.run([PROMTOOL, "check", "metrics"], input=exposition, capture_output=True, timeout=60)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
