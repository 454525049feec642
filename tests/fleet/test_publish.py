"""Publishing, history, the fleet's totals, the budget arithmetic and the DEPLOYMENT checks."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from django.db import connections
from django.test import override_settings

from django_poolguard.checks import check_deployment
from django_poolguard.engine.side_connection import connection_params
from django_poolguard.fleet import budget, collect, publish
from tests.fleet_helpers import Fleet, fleet_env, make_fleet

__all__ = ["fleet_env", "make_fleet"]  # fixtures used by this module


def hold(alias: str) -> None:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")


# --- History ---------------------------------------------------------------------------------


def alias_data(in_use: int, p95: float = 1.0) -> dict[str, Any]:
    return {"in_use": in_use, "idle": 1, "waiting": 0, "max": 4, "acquire_ms": {"p95": p95}}


def test_history_keeps_one_point_per_step_and_15_minutes() -> None:
    history = publish.History()
    history.record("default", alias_data(1), now=1000.0)
    history.record("default", alias_data(2), now=1001.0)
    history.record("default", alias_data(3), now=1002.0)  # same 5 s step: replaces the newest point
    assert history.points("default") == [[1000.0, 1, 1, 0, 4, 1.0], [1002.0, 3, 1, 0, 4, 1.0]]
    history.record("default", alias_data(4, 9.5), now=1008.0)
    assert [p[1] for p in history.points("default")] == [1, 3, 4]
    assert history.points("default")[-1][5] == 9.5
    history.record("default", alias_data(5), now=1000.0 + 15 * 60 + 1)
    assert [p[1] for p in history.points("default")] == [3, 4, 5]  # older than 15 minutes: gone
    for minute in range(60):
        history.record("default", alias_data(minute), now=5000.0 + minute * 6)
    assert len(history.points("default")) <= publish.HISTORY_POINTS + 1


def test_fleet_history_sums_processes_per_step() -> None:
    processes = [
        {
            "host": "a",
            "pid": 1,
            "aliases": {"default": {"history": [[100.0, 1, 1, 0, 4, 2.0], [106.0, 2, 0, 1, 4, 3.0]]}},
        },
        {"host": "b", "pid": 2, "aliases": {"default": {"history": [[101.0, 3, 1, 0, 4, 7.0]]}}},
    ]
    assert collect.fleet_history(processes, "default") == [[100.0, 4, 2, 0, 8, 7.0], [105.0, 2, 0, 1, 4, 3.0]]


# --- The database store ----------------------------------------------------------------------


def _rows(sql: str, params: list[Any] | None = None) -> list[Any]:
    with psycopg.connect(**connection_params("default")) as connection:
        return connection.execute(sql, params).fetchall()


@pytest.mark.django_db(transaction=True)
def test_database_publishing_upserts_one_row_and_drops_silent_ones(make_alias: Callable[..., str]) -> None:
    alias = make_alias(pool={"min_size": 0, "max_size": 3, "timeout": 5})
    hold(alias)
    key = publish.process_key()
    assert publish.publish_now()
    assert publish.publish_now()  # a second publish updates the same row
    assert _rows("SELECT count(*) FROM django_poolguard_processsnapshot WHERE key = %s", [key]) == [(1,)]
    # A process that went silent an hour ago (crashed) and one that published just now.
    for ghost, age in (("ghost:1", "1 hour"), ("ghost:2", "0 seconds")):
        _rows(
            "INSERT INTO django_poolguard_processsnapshot (key, host, pid, role, updated_at, data) "
            "VALUES (%s, 'ghost', %s, 'web', now() - %s::interval, %s::jsonb) RETURNING id",
            [
                ghost,
                int(ghost[-1]),
                age,
                json.dumps(
                    {
                        "host": "ghost",
                        "pid": int(ghost[-1]),
                        "role": "web",
                        "aliases": {},
                        "publish_interval": 5.0,
                    }
                ),
            ],
        )
    published = {(p["host"], p["pid"]): p for p in publish.read_published().processes}
    assert ("ghost", 1) not in published and ("ghost", 2) in published
    mine = published[(publish.hostname(), os.getpid())]
    assert mine["aliases"][alias]["in_use"] == 1
    assert mine["aliases"][alias]["history"][-1][1] == 1
    assert mine["aliases"][alias]["checkouts"][0]["stack"][0].startswith("tests/fleet/test_publish.py")
    assert publish.publish_now()
    keys = {k for (k,) in _rows("SELECT key FROM django_poolguard_processsnapshot")}
    assert "ghost:1" not in keys and "ghost:2" in keys  # the silent row is cleaned up, the fresh one kept
    connections[alias].close()


@pytest.mark.django_db(transaction=True)
def test_collect_includes_history_for_the_dashboard(make_alias: Callable[..., str]) -> None:
    alias = make_alias(pool={"min_size": 0, "max_size": 3, "timeout": 5})
    hold(alias)
    data = collect.collect(alias)
    total = data["aliases"][alias]
    assert (total["in_use"], total["max"]) == (1, 3)
    assert data["history_fields"] == ["t", "in_use", "idle", "waiting", "max", "acquire_p95_ms"]
    assert total["history"][-1][1:5] == [1, 0, 0, 3]
    assert data["processes"][0]["aliases"][alias]["history"]
    assert "history" not in collect.collect(alias, history=False)["aliases"][alias]
    assert data["database"]["alias"] == alias and data["budget"]["alias"] == alias
    connections[alias].close()


@pytest.mark.django_db(transaction=True)
def test_cache_publishing_through_a_django_cache(make_alias: Callable[..., str], settings: Any) -> None:
    caches = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "fleet": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "fleet-test"},
    }
    guard = {**settings.POOLGUARD, "PUBLISH": "cache", "PUBLISH_CACHE": "fleet"}
    alias = make_alias(pool={"min_size": 0, "max_size": 2, "timeout": 5})
    hold(alias)
    with override_settings(CACHES=caches, POOLGUARD=guard):
        from django.core.cache import caches as cache_handler

        cache = cache_handler["fleet"]
        cache.set(publish.CACHE_INDEX, ["gone:1"])  # its key expired long ago
        assert publish.publish_now()
        published = publish.read_published().processes
        assert [(p["host"], p["pid"]) for p in published] == [(publish.hostname(), os.getpid())]
        assert published[0]["aliases"][alias]["in_use"] == 1
        assert cache.get(publish.CACHE_INDEX) == [publish.process_key()]  # "gone:1" pruned
        publish.withdraw()
        assert publish.read_published().processes == []
    connections[alias].close()


@pytest.mark.django_db(transaction=True)
def test_a_process_without_a_pool_publishes_nothing(make_fleet: Callable[..., Fleet]) -> None:
    code = (
        "import os; from django_poolguard.fleet.publish import publish_now; print(os.getpid(), publish_now())"
    )
    result = make_fleet().manage("shell", "-c", code)
    pid, answer = result.stdout.strip().splitlines()[-1].split()
    assert answer == "False", result.stderr
    assert _rows("SELECT count(*) FROM django_poolguard_processsnapshot WHERE pid = %s", [int(pid)]) == [(0,)]


# --- Budget arithmetic -----------------------------------------------------------------------


def test_budget_of_the_seed_incident() -> None:
    pods = budget.Workload("web", 24, 1, {"default": 12}, side_connections=0)
    data = budget.compute(max_connections=300, superuser_reserved=3, reserved=10, workloads=[pods])
    # The article's 288 possible connections against 300 - 3 - 10 = 287 usable ones.
    assert (data["ceiling"], data["planned"], data["status"]) == (287, 288, "over")
    assert data["workloads"]["web"]["safe_max_size"] == 11
    tight = budget.Workload("web", 21, 1, {"default": 12})  # 21 x 13 = 273 of 287: within 10 %
    data = budget.compute(max_connections=300, superuser_reserved=3, reserved=10, workloads=[tight])
    assert data["status"] == "tight"
    assert data["workloads"]["web"]["comfortable_max_size"] == int(0.9 * 287 / 21) - 1 == 11
    before = budget.Workload("web", 8, 1, {"default": 12}, side_connections=0)
    data = budget.compute(max_connections=300, superuser_reserved=3, reserved=10, workloads=[before])
    assert (data["planned"], data["status"], data["headroom"]) == (96, "ok", 191)


def test_budget_thresholds_and_shares() -> None:
    def status(planned: int) -> str:
        shape = budget.Workload("web", planned, 1, {"default": 1}, side_connections=0)
        return budget.compute(max_connections=100, superuser_reserved=0, reserved=0, workloads=[shape])[
            "status"
        ]

    assert [status(90), status(91), status(100), status(101)] == ["ok", "tight", "tight", "over"]
    web = budget.Workload("web", 10, 2, {"default": 5})  # 10 x 2 x (5 + 1) = 120
    worker = budget.Workload("worker", 4, 4, {"worker": 2, "analytics": 1})  # 4 x 4 x (3 + 1) = 64
    data = budget.compute(max_connections=200, superuser_reserved=3, reserved=10, workloads=[web, worker])
    assert (data["ceiling"], data["planned"], data["status"]) == (187, 184, "tight")
    assert data["workloads"]["web"]["ceiling"] == 187 - 64
    assert data["workloads"]["web"]["safe_max_size"] == (187 - 64) // 20 - 1 == 5
    assert data["workloads"]["worker"]["safe_max_size"] == (187 - 120) // 16 - 1 == 3
    huge = budget.Workload("web", 500, 1, {"default": 5})
    data = budget.compute(max_connections=100, superuser_reserved=3, reserved=10, workloads=[huge])
    assert data["workloads"]["web"]["safe_max_size"] is None  # not even a pool of 1 fits


# --- DEPLOYMENT checks -----------------------------------------------------------------------


def _ids(deployment: Any, settings: Any) -> list[tuple[str, str]]:
    settings.POOLGUARD = {**settings.POOLGUARD, "DEPLOYMENT": deployment}
    return [(m.id, m.msg) for m in check_deployment()]


def test_deployment_is_validated(settings: Any) -> None:
    worker = {"worker": {"instances": 2, "processes": 1}}  # the test settings' worker alias has a pool
    assert _ids({"web": {"instances": 24, "processes": 4}, **worker}, settings) == []
    assert _ids({}, settings) == []
    [(ident, msg)] = _ids(["web"], settings)
    assert ident == "django_poolguard.E010" and "must be a dict" in msg
    [(ident, msg), (warn, _)] = _ids({"wbe": {"instances": 2}, **worker}, settings)
    assert ident == "django_poolguard.E010" and "'wbe'" in msg and warn == "django_poolguard.W010"
    hints = [m.hint for m in check_deployment()]
    assert "did you mean 'web'?" in hints[0]
    for bad in ("24", 0, -1, True, 2.5):
        messages = _ids({"web": {"instances": bad}, **worker}, settings)
        assert [m[0] for m in messages] == ["django_poolguard.E010"], bad
        assert "['instances']" in messages[0][1]
    [(ident, msg)] = _ids({"web": {"instances": 2, "pods": 3}, **worker}, settings)
    assert ident == "django_poolguard.E010" and "'pods'" in msg
    [(ident, msg)] = _ids({"web": 3, **worker}, settings)
    assert ident == "django_poolguard.E010"
