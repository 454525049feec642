"""A fleet budget across real OS processes: a burst of 10 processes started at once never opens
more than the budget, and a SIGKILLed process's lease is freed by expiry for the others."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest

from django_poolguard.engine.side_connection import side_cursor
from tests.fleet_helpers import ROOT, fleet_env, redis_url  # noqa: F401  (fleet_env is a fixture)

pytestmark = pytest.mark.django_db(transaction=True)

INTERVAL = 0.5  # the children's PUBLISH_INTERVAL: their heartbeat; a lease expires after 1.5 s


class BudgetFleet:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.children: list[subprocess.Popen[str]] = []
        self.log = tempfile.TemporaryFile("w+")  # the children's stderr, shown when a test fails
        self.overrides: list[Any] = []  # settings overridden to read the children's store

    def logs(self) -> str:
        self.log.seek(0)
        return self.log.read()[-6000:]

    def start(self, threads: int) -> subprocess.Popen[str]:
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.fleet_budget_child", str(threads)],
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        self.children.append(child)
        return child

    def wait_ready(self, child: subprocess.Popen[str]) -> None:
        assert child.stdout is not None
        line = child.stdout.readline()
        if line.strip() != "ready":
            child.kill()
            child.communicate(timeout=10)
            pytest.fail(f"budget child did not start: {line!r} {self.logs()}")

    def sessions(self) -> dict[int, int]:
        """Pool sessions of the children (``web:default:<host>:<pid>``) by pid; side connections
        (``poolguard:...``) and this test process's own pools are not counted."""
        pids = [child.pid for child in self.children]
        with side_cursor("default") as cursor:
            cursor.execute(
                "SELECT split_part(application_name, ':', 4)::int AS pid, count(*) FROM pg_stat_activity "
                "WHERE application_name LIKE 'web:default:%%' "
                "AND split_part(application_name, ':', 4) ~ '^[0-9]+$' "
                "AND split_part(application_name, ':', 4)::int = ANY(%s) GROUP BY 1",
                [pids],
            )
            return {int(pid): int(n) for pid, n in cursor.fetchall()}

    def stop_all(self) -> None:
        for override in self.overrides:
            override.disable()
        self.overrides = []
        for child in self.children:
            if child.poll() is None:
                try:
                    child.communicate(input="", timeout=20)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.communicate()


@pytest.fixture(params=["database", "cache"])
def budget_fleet(request: Any, fleet_env: dict[str, str]) -> Iterator[Any]:  # noqa: F811
    def make(budget: int, max_size: int) -> BudgetFleet:
        env = {
            **fleet_env,
            "POOLGUARD_FLEET_WORKER": "0",
            "POOLGUARD_FLEET_PUBLISH": "None",
            "POOLGUARD_FLEET_INTERVAL": str(INTERVAL),
            "POOLGUARD_FLEET_BUDGET": str(budget),
            "POOLGUARD_FLEET_MAX_SIZE": str(max_size),
            "POOLGUARD_FLEET_LEASE_STORE": request.param,
        }
        if request.param == "cache":
            url = redis_url()
            if url is None:
                pytest.skip("no Redis at REDIS_URL")
            env["POOLGUARD_FLEET_REDIS"] = url
            env["POOLGUARD_FLEET_PREFIX"] = f"poolguard-budget-{os.getpid()}-{time.monotonic_ns()}"
        fleet = BudgetFleet(env)
        fleets.append(fleet)
        return fleet

    fleets: list[BudgetFleet] = []
    yield make
    for fleet in fleets:
        fleet.stop_all()


def test_a_burst_of_10_processes_never_overshoots_the_budget(budget_fleet):
    fleet = budget_fleet(budget=12, max_size=4)
    for _ in range(10):
        fleet.start(threads=4)  # 40 threads want connections; 12 may exist
    for child in fleet.children:
        fleet.wait_ready(child)
    peak, deadline = 0, time.monotonic() + 90
    everyone_served = False
    while time.monotonic() < deadline:
        counts = fleet.sessions()
        total = sum(counts.values())
        peak = max(peak, total)
        assert total <= 12, f"{counts}\n{fleet.logs()}"
        if len(counts) == 10 and total >= 10:
            everyone_served = True
            break
        time.sleep(0.05)
    assert everyone_served, f"not every process got its share: {fleet.sessions()}\n{fleet.logs()}"
    until = time.monotonic() + 3  # and it holds while they keep asking
    while time.monotonic() < until:
        assert sum(fleet.sessions().values()) <= 12
        time.sleep(0.05)


@pytest.mark.timing
def test_a_newcomer_to_a_fully_leased_budget_gets_its_share_within_a_heartbeat_and_a_second(budget_fleet):
    # A 5 s heartbeat: the old keeper needed >= 2 heartbeats (10 s) from the newcomer's join (the
    # incumbent learned at its heartbeat, shrank at the next; the newcomer asked a full fleet again
    # only at its own). Now: <= 1 heartbeat for the incumbent to learn, then about a second.
    slow = 5.0
    fleet = budget_fleet(budget=4, max_size=4)
    fleet.env["POOLGUARD_FLEET_INTERVAL"] = str(slow)
    first = fleet.start(threads=6)  # more threads than connections: always busy, clients waiting
    fleet.wait_ready(first)
    deadline = time.monotonic() + 60
    while fleet.sessions().get(first.pid, 0) < 4:
        assert time.monotonic() < deadline, f"{fleet.sessions()}\n{fleet.logs()}"
        time.sleep(0.05)
    second = fleet.start(threads=6)
    fleet.wait_ready(second)
    ready = time.monotonic()
    while (counts := fleet.sessions()).get(second.pid, 0) < 2:  # its share: 4 // 2
        assert sum(counts.values()) <= 4, f"{counts}\n{fleet.logs()}"
        waited = time.monotonic() - ready
        assert waited < 1.7 * slow, f"after {waited:.1f} s the newcomer has {counts}\n{fleet.logs()}"
        time.sleep(0.05)
    assert sum(fleet.sessions().values()) <= 4


def test_a_killed_process_lease_is_freed_by_expiry(budget_fleet):
    fleet = budget_fleet(budget=4, max_size=4)
    first = fleet.start(threads=4)
    fleet.wait_ready(first)
    deadline = time.monotonic() + 60
    while fleet.sessions().get(first.pid, 0) < 4:
        assert time.monotonic() < deadline, fleet.sessions()
        time.sleep(0.05)
    second = fleet.start(threads=4)
    fleet.wait_ready(second)
    time.sleep(4 * INTERVAL)
    counts = fleet.sessions()
    assert sum(counts.values()) <= 4, counts
    os.kill(first.pid, signal.SIGKILL)  # no exit handler: its lease stays until it expires
    first.wait(10)
    deadline = time.monotonic() + 60
    while (counts := fleet.sessions()).get(second.pid, 0) < 4:
        assert sum(counts.values()) <= 4, counts
        assert time.monotonic() < deadline, counts
        time.sleep(0.05)


def test_a_process_that_exits_cleanly_releases_its_lease_at_once(budget_fleet):
    fleet = budget_fleet(budget=3, max_size=3)
    fleet.env["POOLGUARD_FLEET_INTERVAL"] = "20"  # a 60 s ttl: only a release can free it in time
    child = fleet.start(threads=3)
    fleet.wait_ready(child)
    deadline = time.monotonic() + 60
    while fleet.sessions().get(child.pid, 0) < 3:
        assert time.monotonic() < deadline, fleet.sessions()
        time.sleep(0.05)
    store = _store(fleet)
    key = "web@" + _server_key()
    assert store.exchange(key, "observer", 3, 0, 3, 5).lease == 0  # the child holds the whole budget
    child.communicate(input="", timeout=30)
    assert child.returncode == 0
    granted = store.exchange(key, "observer", 3, 0, 3, 5)
    assert granted.lease == 3 and granted.members == 1, granted
    store.release(key, "observer")


def _server_key() -> str:
    from django.db import connections

    settings_dict = connections["default"].settings_dict
    return f"{settings_dict['HOST'] or 'localhost'}:{settings_dict['PORT'] or '5432'}/{settings_dict['NAME']}"


def _store(fleet: BudgetFleet) -> Any:
    from django.test import override_settings

    from django_poolguard.fleet.lease_stores import CacheLeaseStore, DatabaseLeaseStore

    if fleet.env["POOLGUARD_FLEET_LEASE_STORE"] == "database":
        return DatabaseLeaseStore("default")
    caches = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "fleet": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": fleet.env["POOLGUARD_FLEET_REDIS"],
            "KEY_PREFIX": fleet.env["POOLGUARD_FLEET_PREFIX"],
        },
    }
    override = override_settings(CACHES=caches)
    override.enable()
    fleet.overrides.append(override)
    return CacheLeaseStore("fleet")
