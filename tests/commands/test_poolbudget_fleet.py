"""``poolbudget`` for budgeted aliases: what each process holds at the DEPLOYMENT maximum, and
what the pools would open without the budget (display only: nothing connects with
``--max-connections``)."""

from __future__ import annotations

import copy
import io
import json
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

pytestmark = pytest.mark.filterwarnings("ignore:Overriding setting DATABASES:UserWarning")


def databases(budget: Any, workload: str = "web", max_size: int = 12) -> dict[str, Any]:
    copied = copy.deepcopy(django_settings.DATABASES)
    copied["default"]["OPTIONS"]["pool"]["max_size"] = max_size
    copied["default"]["OPTIONS"]["poolguard"] = {"workload": workload}
    if budget is not None:
        copied["default"]["OPTIONS"]["poolguard"]["fleet_budget"] = budget
    return copied


def poolbudget(budget: Any, deployment: dict[str, Any], *args: str, **db: Any) -> str:
    poolguard = {**django_settings.POOLGUARD, "DEPLOYMENT": deployment}
    out = io.StringIO()
    with override_settings(DATABASES=databases(budget, **db), POOLGUARD=poolguard):
        call_command("poolbudget", "--max-connections", "300", "--superuser-reserved", "3", *args, stdout=out)
    return out.getvalue()


SEED = {"web": {"instances": 24, "processes": 1}, "worker": {"instances": 1}}


def test_a_budget_is_shared_by_the_deployment_maximum() -> None:
    text = poolbudget(120, SEED)
    assert (
        "web (default): fleet_budget 120 \u2192 5 per process at 24 processes (max_size 12 would need 288)"
        in (text)
        or "web: fleet_budget 120 \u2192 5 per process at 24 processes (max_size 12 would need 288)" in text
    ), text
    [plan] = json.loads(poolbudget(120, SEED, "--json"))["fleet_budgets"]
    assert plan == {
        "alias": "default",
        "workload": "web",
        "fleet_budget": 120,
        "budget": 120,
        "processes": 24,
        "declared": True,
        "per_process": 5,
        "max_size": 12,
        "unbudgeted": 288,
    }


def test_auto_is_what_the_server_leaves_the_workload() -> None:
    [plan] = json.loads(poolbudget("auto", SEED, "--json"))["fleet_budgets"]
    data = json.loads(poolbudget("auto", SEED, "--json"))
    web = data["workloads"]["web"]
    # What the server leaves the workload: its ceiling less its 24 side connections (the budgeted
    # pool itself is not counted at its max_size), as each process resolves "auto".
    assert (
        plan["budget"] == web["ceiling"] - 24 * web["side_connections"] == 287 - 1 * (4 + 1) - 24
    )  # the worker: 1 x (max_size 4 + 1)
    assert plan["per_process"] == plan["budget"] // 24
    assert f"fleet_budget auto = {plan['budget']} \u2192 {plan['per_process']} per process" in poolbudget(
        "auto", SEED
    )


def test_a_budget_smaller_than_the_fleet_and_one_that_never_binds_are_named() -> None:
    text = poolbudget(20, SEED)
    assert "0 per process at 24 processes" in text
    assert "fewer than one connection per process: 4 of them would get none" in text
    text = poolbudget(1000, SEED)
    assert (
        "41 per process" in text and "max_size caps first: the budget only binds above 83 processes" in text
    )


def test_an_undeclared_workload_counts_as_one_process() -> None:
    text = poolbudget(50, {"worker": {"instances": 1}})
    assert "fleet_budget 50 \u2192 50 per process at 1 process (not in DEPLOYMENT: 1 x 1)" in text


def test_no_budget_no_section() -> None:
    text = poolbudget(None, SEED)
    assert "Fleet budgets" not in text
    assert json.loads(poolbudget(None, SEED, "--json"))["fleet_budgets"] == []


@pytest.mark.parametrize("bad", [0, -3, True, "lots", 2.5])
def test_a_bad_budget_is_a_command_error_naming_the_setting(bad: Any) -> None:
    with pytest.raises(CommandError, match=r"\['fleet_budget'\] is .*whole number >= 1 or \"auto\".*E018"):
        poolbudget(bad, SEED)


def test_huge_numbers_are_shown_whole() -> None:
    huge = 2**200
    deployment = {"web": {"instances": 10**6, "processes": 10**3}}
    text = poolbudget(huge, deployment)
    assert f"fleet_budget {huge} \u2192 {huge // 10**9} per process at {10**9} processes" in text
    [plan] = json.loads(poolbudget(huge, deployment, "--json"))["fleet_budgets"]
    assert plan["per_process"] == huge // 10**9


def test_a_workload_name_that_could_draw_on_a_terminal_is_refused() -> None:
    with pytest.raises(CommandError, match="E013") as error:
        poolbudget(120, SEED, workload="web\x1b[2J")
    assert "\x1b" not in str(error.value)  # the setting is quoted with repr()


def test_the_budget_table_names_the_budgeted_alias() -> None:
    assert "12 (default: fleet_budget 120)" in poolbudget(120, SEED)


@pytest.mark.django_db
def test_poolstats_counts_a_budgeted_alias_once_for_the_fleet() -> None:
    poolguard = {**django_settings.POOLGUARD, "DEPLOYMENT": SEED}
    out = io.StringIO()
    with override_settings(DATABASES=databases(120), POOLGUARD=poolguard):
        call_command("poolstats", stdout=out)
    # 120 for the fleet plus each of the 24 processes' side connection, not 24 x (12 + 1).
    assert "  web: fleet_budget 120 + 24 x 1 x (0 + 1) = 144;" in out.getvalue(), out.getvalue()
