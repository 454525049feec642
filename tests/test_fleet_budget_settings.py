"""``OPTIONS["poolguard"]["fleet_budget"]``, ``lease_store`` and ``lease_cache``: a bad value is system
check E018 naming the setting and the fix, and stops the alias's first connection; a budgeted
workload counts as its budget in E001/W001 and ``poolbudget``."""

from __future__ import annotations

import copy
import io
import json
from typing import Any

import pytest
from django.conf import settings
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connections
from django.test import override_settings

from django_poolguard.fleet.budget import workloads_for_server

pytestmark = pytest.mark.filterwarnings("ignore:Overriding setting DATABASES:UserWarning")


def _databases(poolguard: dict[str, Any], pool: Any = None) -> dict[str, Any]:
    databases = copy.deepcopy(settings.DATABASES)
    databases["default"]["OPTIONS"]["poolguard"] = {
        **databases["default"]["OPTIONS"]["poolguard"],
        **poolguard,
    }
    if pool is not None:
        databases["default"]["OPTIONS"]["pool"] = pool
    return databases


@pytest.mark.parametrize(
    ("poolguard", "pool", "says", "fix"),
    [
        (
            {"fleet_budget": 0},
            None,
            "['fleet_budget'] is 0; it must be a whole number >= 1 or \"auto\"",
            "e.g. 120",
        ),
        ({"fleet_budget": "120"}, None, "['fleet_budget'] is '120'", 'or "auto"'),
        ({"fleet_budget": True}, None, "['fleet_budget'] is True", "e.g. 120"),
        (
            {"fleet_budget": 10},
            False,
            "['fleet_budget'] is set but the alias has no pool to cap",
            "Add OPTIONS['pool']",
        ),
        ({"fleet_budget": 10, "lease_store": "redis"}, None, "['lease_store'] is 'redis'", 'Use "database"'),
        ({"fleet_budget": 10, "lease_cache": ""}, None, "['lease_cache'] is ''", "CACHES aliases"),
        (
            {"fleet_budget": 10, "lease_store": "cache", "lease_cache": "shared"},
            None,
            "lease_cache names 'shared', which is not in CACHES",
            "CACHES aliases",
        ),
    ],
)
def test_a_bad_fleet_budget_setting_is_check_e018(poolguard, pool, says, fix):
    with override_settings(DATABASES=_databases(poolguard, pool)):
        messages = [m for m in run_checks() if m.id == "django_poolguard.E018"]
    assert len(messages) == 1 and says in messages[0].msg, [m.msg for m in messages]
    assert fix in messages[0].hint


def test_good_fleet_budget_settings_pass_the_checks():
    for poolguard in ({"fleet_budget": 120}, {"fleet_budget": "auto", "lease_store": "cache"}):
        with override_settings(DATABASES=_databases(poolguard)):
            assert [m for m in run_checks() if m.id.startswith("django_poolguard.")] == []


@pytest.mark.django_db(transaction=True)
def test_a_bad_fleet_budget_stops_the_first_connection(make_alias):
    alias = make_alias(poolguard={"fleet_budget": -3})
    with pytest.raises(ImproperlyConfigured, match=r"\['fleet_budget'\] is -3.*E018"):
        connections[alias].ensure_connection()


def test_a_budgeted_workload_counts_as_its_budget():
    poolguard = {**settings.POOLGUARD, "DEPLOYMENT": {"web": {"instances": 50}, "worker": {"instances": 2}}}
    with override_settings(DATABASES=_databases({"fleet_budget": 120}), POOLGUARD=poolguard):
        web = {w.name: w for w in workloads_for_server("default")}["web"]
        # 120 connections for the whole fleet plus one side connection per process, not 50 x (8 + 1).
        assert web.connections == 120 + 50 * 1
        out = io.StringIO()
        call_command("poolbudget", "--max-connections", "1000", "--json", stdout=out)
    assert json.loads(out.getvalue())["workloads"]["web"]["connections"] == 170


@pytest.mark.django_db(transaction=True)
def test_auto_is_what_the_server_leaves_the_workload():
    from django_poolguard.fleet.activity import server_settings
    from django_poolguard.fleet.budget import auto_budget

    poolguard = {**settings.POOLGUARD, "DEPLOYMENT": {"web": {"instances": 3}, "worker": {"instances": 2}}}
    with override_settings(DATABASES=_databases({"fleet_budget": "auto"}), POOLGUARD=poolguard):
        server = server_settings("default")
        ceiling = server["max_connections"] - server["superuser_reserved_connections"] - 10
        worker = 2 * (4 + 1)  # the worker alias: max_size 4 plus a side connection, in 2 processes
        assert auto_budget("default") == ceiling - worker - 3 * 1  # minus web's own side connections


@pytest.mark.django_db(transaction=True)
def test_e001_counts_a_budgeted_workload_as_its_budget():
    from django_poolguard.fleet.activity import server_settings
    from django_poolguard.fleet.budget import budget_messages

    server = server_settings("default")
    ceiling = server["max_connections"] - server["superuser_reserved_connections"] - 10
    instances = ceiling // 3  # x (8 + 1) per process: three times over without a budget
    poolguard = {
        **settings.POOLGUARD,
        "DEPLOYMENT": {"web": {"instances": instances}, "worker": {"instances": 1}},
    }
    with override_settings(POOLGUARD=poolguard):
        over = budget_messages(["default"])
    assert [m.id for m in over] == ["django_poolguard.E001"]
    with override_settings(DATABASES=_databases({"fleet_budget": 10}), POOLGUARD=poolguard):
        assert budget_messages(["default"]) == []
