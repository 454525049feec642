"""What a process does with a setting its system checks report: a clear error naming the setting
when the alias first connects, or the default for a guard-only setting, never a TypeError deep
in the checkout path. Also the budget when an alias's workload contradicts WORKLOADS, and the
engine used without the app."""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connections
from django.test import override_settings

from django_poolguard.conf import guard_settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("poolguard", "names"),
    [
        (
            {"leak_threshold": "abc"},
            r"\['leak_threshold'\] is 'abc'; it must be a positive number of seconds",
        ),
        ({"hoard_threshold": []}, r"\['hoard_threshold'\] is \[\]"),
        ({"statement_timeout": 1e12}, r"\['statement_timeout'\] is 1000000000000.0.*E012"),
        ({"workload": 123}, r"\['workload'\] is 123.*E013"),
    ],
)
def test_a_bad_guard_option_fails_the_first_connection_naming_it(make_alias, poolguard, names) -> None:
    alias = make_alias(poolguard=poolguard)
    with pytest.raises(ImproperlyConfigured, match=names):
        connections[alias].ensure_connection()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("pool", "names"),
    [
        (
            {"min_size": 0, "max_size": 1, "num_workers": 0},
            r"\['num_workers'\] is 0; it must be a whole number >= 1",
        ),
        ({"min_size": 0, "max_size": 1, "timeout": "5"}, r"\['timeout'\] is '5'"),
        ({"min_size": 0, "max_size": 1, "max_lifetime": -1}, r"\['max_lifetime'\] is -1"),
        ({"min_size": 0, "max_size": 1, "max_sise": 2}, r"has 'max_sise'.*did you mean 'max_size'"),
        ([1], r"\['pool'\] must be True or a dict"),
    ],
)
def test_a_bad_pool_argument_fails_the_first_connection_naming_it(make_alias, pool, names) -> None:
    alias = make_alias(pool=pool)
    with pytest.raises(ImproperlyConfigured, match=names + r".*\(system check django_poolguard.E003\)"):
        connections[alias].ensure_connection()


@pytest.mark.django_db(transaction=True)
def test_a_bad_guard_setting_falls_back_to_its_default_and_says_so(
    make_alias, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="django_poolguard")
    settings.POOLGUARD = {**settings.POOLGUARD, "STACK_DEPTH": 2.5, "CAPTURE_STACKS": "no"}
    alias = make_alias()
    with connections[alias].cursor() as cursor:  # a checkout captures a stack with these settings
        cursor.execute("SELECT 1")
    assert guard_settings.STACK_DEPTH == 20 and guard_settings.CAPTURE_STACKS is True
    text = caplog.text
    assert "POOLGUARD['STACK_DEPTH'] is 2.5; it must be a whole number >= 1. Using the default, 20" in text
    assert "POOLGUARD['CAPTURE_STACKS'] is 'no'; it must be True or False. Using the default, True" in text
    assert "django_poolguard.E011" in text


# --- An alias's workload that contradicts WORKLOADS ---------------------------------------------


def _analytics_labelled_default() -> dict[str, Any]:
    databases = copy.deepcopy(django_settings.DATABASES)
    databases["default"]["OPTIONS"]["poolguard"]["workload"] = "analytics"
    return databases


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES:UserWarning")
def test_a_workload_label_contradicting_workloads_is_its_own_check() -> None:
    poolguard = {**django_settings.POOLGUARD, "DEPLOYMENT": {"web": {"instances": 50}}}
    with override_settings(DATABASES=_analytics_labelled_default(), POOLGUARD=poolguard):
        messages = [m for m in run_checks() if m.id.startswith("django_poolguard.")]
    assert [m.id for m in messages if m.id != "django_poolguard.W010"] == ["django_poolguard.E014"]
    [contradiction] = [m for m in messages if m.id == "django_poolguard.E014"]
    assert "['workload'] is 'analytics', but POOLGUARD['WORKLOADS'] sends workload 'web' to 'default'" in (
        contradiction.msg
    )
    assert "Set workload to 'web'" in contradiction.hint


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES:UserWarning")
def test_poolbudget_counts_the_workloads_that_open_the_pool_not_the_label() -> None:
    poolguard = {
        **django_settings.POOLGUARD,
        "DEPLOYMENT": {"web": {"instances": 50}, "worker": {"instances": 2}},
    }
    with override_settings(DATABASES=_analytics_labelled_default(), POOLGUARD=poolguard):
        out = io.StringIO()
        call_command("poolbudget", "--max-connections", "1000", "--json", stdout=out)
    data = json.loads(out.getvalue())
    web = data["workloads"]["web"]
    # default's max_size 8 in each of the 50 web processes, + 1 side connection each.
    assert (web["pools"], web["connections"]) == ({"default": 8}, 50 * (8 + 1))
    assert "analytics" not in data["workloads"]


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES:UserWarning")
def test_an_alias_several_workloads_use_is_counted_in_each() -> None:
    poolguard = {
        "WORKLOADS": {"web": "default", "worker": "worker", "analytics": "default"},
        "DEPLOYMENT": {"web": {"instances": 10}, "worker": {"instances": 2}, "analytics": {"instances": 3}},
    }
    with override_settings(DATABASES=_analytics_labelled_default(), POOLGUARD=poolguard):
        assert [m.id for m in run_checks() if m.id.startswith("django_poolguard.")] == []
        out = io.StringIO()
        call_command("poolbudget", "--max-connections", "1000", "--json", stdout=out)
    workloads = json.loads(out.getvalue())["workloads"]
    assert workloads["web"]["pools"] == workloads["analytics"]["pools"] == {"default": 8}
    assert (workloads["web"]["connections"], workloads["analytics"]["connections"]) == (90, 27)


# --- The engine without the app ----------------------------------------------------------------

WITHOUT_APP = """
    import django
    from django.core.management import call_command
    django.setup()
    call_command("check", "--database", "default")
    from django.db import connection
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    print("queried")
"""


def test_the_engine_without_the_app_warns_in_check_and_in_its_first_log_line(tmp_path: Path) -> None:
    (tmp_path / "settings_without_app.py").write_text(
        textwrap.dedent(
            """
            from tests.settings import DATABASES as _DATABASES, LOGGING, SECRET_KEY, USE_TZ

            INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth"]
            DATABASES = {"default": _DATABASES["default"]}
            """
        )
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)]),
        "DJANGO_SETTINGS_MODULE": "settings_without_app",
    }
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(WITHOUT_APP)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "queried" in result.stdout, result.stderr
    check_output, _, log = result.stderr.partition("System check identified 1 issue (0 silenced).")
    assert (
        "default: (django_poolguard.W011) DATABASES['default'] uses the poolguard engine but " in check_output
    )
    assert "'django_poolguard' is not in INSTALLED_APPS" in check_output
    assert "HINT: Add 'django_poolguard' to INSTALLED_APPS" in check_output
    first_log_line = log.strip().splitlines()[0]
    assert "'django_poolguard' is not in INSTALLED_APPS: its pool runs with no watchdog" in first_log_line
    assert "(system check django_poolguard.W011)" in first_log_line
