"""Every misconfiguration is reported at startup with an id, the setting and the fix."""

from __future__ import annotations

import copy

import pytest
from django.conf import settings
from django.core.checks import run_checks
from django.test import override_settings

ENGINE = "django_poolguard.backends.postgresql"
# The checks read settings.DATABASES, so these tests override it (never touching a connection).
pytestmark = pytest.mark.filterwarnings("ignore:Overriding setting DATABASES:UserWarning")


def _databases(**options):
    databases = copy.deepcopy(settings.DATABASES)
    databases["default"].update(options.pop("keys", {}))
    databases["default"]["OPTIONS"].update(options)
    return databases


def _poolguard_messages():
    return [m for m in run_checks() if m.id and m.id.startswith("django_poolguard.")]


def _ids(messages):
    return sorted(m.id for m in messages)


def test_the_test_settings_are_clean():
    assert _poolguard_messages() == []


@pytest.mark.parametrize(
    ("databases", "expected_id", "names"),
    [
        (_databases(keys={"CONN_MAX_AGE": 60}), "django_poolguard.E002", "CONN_MAX_AGE"),
        (
            _databases(pool={"min_size": 5, "max_size": 2}),
            "django_poolguard.E003",
            "max_size=2 below min_size=5",
        ),
        (_databases(pool={"max_sise": 5}), "django_poolguard.E003", "did you mean 'max_size'"),
        (_databases(pool={"max_size": -1}), "django_poolguard.E003", "'max_size'] is -1"),
        (_databases(pool={"timeout": 0}), "django_poolguard.E003", "'timeout'] is 0"),
        (_databases(pool="yes"), "django_poolguard.E003", "must be True or a dict"),
        (_databases(poolguard={"leak_threshold": 0}), "django_poolguard.E004", "'leak_threshold'] is 0"),
        (_databases(poolguard={"hoard_threshold": -5}), "django_poolguard.E004", "'hoard_threshold'] is -5"),
        (_databases(poolguard={"statement_timeout": "30s"}), "django_poolguard.E004", "statement_timeout"),
        (
            _databases(poolguard={"timeouts_via": "options"}),
            "django_poolguard.E015",
            "'timeouts_via'] is 'options'",
        ),
        (
            _databases(poolguard={"leak_treshold": 10}),
            "django_poolguard.E005",
            "did you mean 'leak_threshold'",
        ),
    ],
)
def test_bad_alias_settings(databases, expected_id, names):
    with override_settings(DATABASES=databases):
        messages = _poolguard_messages()
    assert _ids(messages) == [expected_id]
    assert names in f"{messages[0].msg} {messages[0].hint}"
    assert messages[0].hint


@pytest.mark.parametrize(
    ("poolguard", "expected_id", "names"),
    [
        ({"MONITOR_INTERVAL": 0}, "django_poolguard.E004", "MONITOR_INTERVAL"),
        ({"PUBLISH_INTERVAL": -1}, "django_poolguard.E004", "PUBLISH_INTERVAL"),
        ({"ALERT_UTILIZATION": 1.5}, "django_poolguard.E004", "ALERT_UTILIZATION"),
        ({"RESERVED_CONNECTIONS": -2}, "django_poolguard.E004", "RESERVED_CONNECTIONS"),
        ({"MONITOR_INTERVALL": 1}, "django_poolguard.E005", "did you mean 'MONITOR_INTERVAL'"),
        ({"PUBLISH": "redis"}, "django_poolguard.E008", "PUBLISH"),
        ({"PUBLISH": "cache", "PUBLISH_CACHE": "nope"}, "django_poolguard.E008", "'nope'"),
        ({"WORKLOADS": {"web": "default", "analytics": "olap"}}, "django_poolguard.E006", "'olap'"),
        ({"WORKLOADS": ["default"]}, "django_poolguard.E006", "must be a dict"),
    ],
)
def test_bad_global_settings(poolguard, expected_id, names):
    with override_settings(POOLGUARD=poolguard):
        messages = _poolguard_messages()
    assert _ids(messages) == [expected_id]
    assert names in f"{messages[0].msg} {messages[0].hint}"
    assert messages[0].hint


def test_worker_alias_without_the_router_is_an_error():
    databases = copy.deepcopy(settings.DATABASES)
    databases["worker"] = copy.deepcopy(databases["default"])
    databases["worker"]["OPTIONS"]["poolguard"]["workload"] = "worker"
    with override_settings(DATABASES=databases, POOLGUARD={}, DATABASE_ROUTERS=[]):
        messages = _poolguard_messages()
    assert _ids(messages) == ["django_poolguard.E007"]
    assert "django_poolguard.routers.WorkloadRouter" in messages[0].hint


def test_engine_without_a_pool_is_a_warning():
    databases = copy.deepcopy(settings.DATABASES)
    del databases["default"]["OPTIONS"]["pool"]
    with override_settings(DATABASES=databases):
        messages = _poolguard_messages()
    assert _ids(messages) == ["django_poolguard.W002"]


def test_settings_follow_override_settings():
    from django_poolguard.conf import guard_settings

    assert guard_settings.RETRY_AFTER == 5
    with override_settings(POOLGUARD={"RETRY_AFTER": 9}):
        assert guard_settings.RETRY_AFTER == 9
    assert guard_settings.RETRY_AFTER == 5


# --- Every bad value gets a named check, never a traceback ------------------------------------


def _guard(**options):
    """The test settings with ``OPTIONS["poolguard"]`` of ``default`` replaced."""
    return _databases(poolguard=options)


@pytest.mark.parametrize(
    ("databases", "expected_id", "names"),
    [
        (_guard(leak_threshold="abc"), "django_poolguard.E004", "['leak_threshold'] is 'abc'"),
        (_guard(leak_threshold=None), "django_poolguard.E004", "['leak_threshold'] is None"),
        (_guard(hoard_threshold=[]), "django_poolguard.E004", "['hoard_threshold'] is []"),
        (_guard(leak_threshold=float("nan")), "django_poolguard.E004", "['leak_threshold'] is nan"),
        (_databases(poolguard=[1]), "django_poolguard.E005", "['poolguard'] must be a dict, not list"),
        (_databases(poolguard="web"), "django_poolguard.E005", "['poolguard'] must be a dict, not str"),
        (_guard(workload=123), "django_poolguard.E013", "['workload'] is 123"),
        (_guard(workload="a:b"), "django_poolguard.E013", "['workload'] is 'a:b'"),
        (_guard(workload=""), "django_poolguard.E013", "['workload'] is ''"),
        (_guard(statement_timeout=0.0001), "django_poolguard.E012", "is 0.0001; it rounds to 0 ms"),
        (
            _guard(statement_timeout=1e12),
            "django_poolguard.E012",
            "is 1000000000000.0; PostgreSQL takes at most",
        ),
        (_guard(idle_in_transaction_timeout=0.0004), "django_poolguard.E012", "rounds to 0 ms"),
        (_guard(statement_timeout="30s"), "django_poolguard.E004", "['statement_timeout'] is '30s'"),
        (_databases(pool={"min_size": 0, "max_size": 0}), "django_poolguard.E003", "['max_size'] is 0"),
        (_databases(pool={"min_size": 0}), "django_poolguard.E003", "min_size=0 and no max_size"),
        (_databases(pool={"num_workers": 0}), "django_poolguard.E003", "['num_workers'] is 0"),
        (_databases(pool={"max_lifetime": -1}), "django_poolguard.E003", "['max_lifetime'] is -1"),
        (_databases(pool={"max_idle": 0}), "django_poolguard.E003", "['max_idle'] is 0"),
        (
            _databases(pool={"reconnect_timeout": "x"}),
            "django_poolguard.E003",
            "['reconnect_timeout'] is 'x'",
        ),
        (
            _databases(pool={"timeout": 1e300}),
            "django_poolguard.E003",
            "['timeout'] is 1e+300; it must be at most",
        ),
        (_databases(pool={"max_waiting": 2.5}), "django_poolguard.E003", "['max_waiting'] is 2.5"),
        (_databases(pool={"min_size": True}), "django_poolguard.E003", "['min_size'] is True"),
        (_databases(pool={"close_returns": "yes"}), "django_poolguard.E003", "['close_returns'] is 'yes'"),
        (_databases(pool={"name": 7}), "django_poolguard.E003", "['name'] is 7"),
    ],
)
def test_every_bad_alias_value_has_a_named_check(databases, expected_id, names):
    with override_settings(DATABASES=databases):
        messages = _poolguard_messages()
    assert _ids(messages) == [expected_id], [m.msg for m in messages]
    assert messages[0].msg.startswith("DATABASES['default']")
    assert names in messages[0].msg
    assert messages[0].hint


@pytest.mark.parametrize(
    ("poolguard", "expected_id", "names"),
    [
        (
            {"RECLAIM_DEAD_THREADS": "no"},
            "django_poolguard.E011",
            "POOLGUARD['RECLAIM_DEAD_THREADS'] is 'no'",
        ),
        ({"CAPTURE_STACKS": 1}, "django_poolguard.E011", "POOLGUARD['CAPTURE_STACKS'] is 1"),
        ({"STACK_DEPTH": 2.5}, "django_poolguard.E004", "POOLGUARD['STACK_DEPTH'] is 2.5"),
        ({"STACK_DEPTH": True}, "django_poolguard.E004", "POOLGUARD['STACK_DEPTH'] is True"),
        ({"MONITOR_INTERVAL": float("inf")}, "django_poolguard.E004", "is inf; it must be at most"),
        ({"RETRY_AFTER": 10**400}, "django_poolguard.E004", "POOLGUARD['RETRY_AFTER'] is 1000"),
        ({"PUBLISH_CACHE": 5}, "django_poolguard.E008", "POOLGUARD['PUBLISH_CACHE'] is 5"),
        ({"PUBLISH": "cache", "PUBLISH_CACHE": ["x"]}, "django_poolguard.E008", "['x']"),
        ({"WORKLOADS": {"web": "default", "a:b": "default"}}, "django_poolguard.E006", "'a:b'"),
        ({"WORKLOADS": {"web": ["default"]}}, "django_poolguard.E006", "alias ['default']"),
        (
            {"RESERVED_CONNECTIONS": None},
            "django_poolguard.E004",
            "POOLGUARD['RESERVED_CONNECTIONS'] is None",
        ),
        ([1], "django_poolguard.E005", "POOLGUARD must be a dict, not list"),
    ],
)
def test_every_bad_global_value_has_a_named_check(poolguard, expected_id, names):
    with override_settings(POOLGUARD=poolguard):
        messages = _poolguard_messages()
    assert _ids(messages) == [expected_id], [m.msg for m in messages]
    assert names in messages[0].msg
    assert messages[0].hint


def test_a_long_value_is_cut_in_the_message():
    with override_settings(DATABASES=_guard(leak_threshold="x" * 10_000)):
        [message] = _poolguard_messages()
    assert len(message.msg) < 200 and "xxx...;" in message.msg


def test_the_timeout_bounds_are_postgresql_s(django_db_blocker):
    """At the bounds the checks accept, PostgreSQL takes the value; past them it refuses every
    connection (or, below 1 ms, reads 0 as no timeout at all)."""
    import psycopg

    from django_poolguard.backends.postgresql.base import session_options
    from django_poolguard.conf import AliasConfig
    from django_poolguard.engine.side_connection import connection_params

    params = connection_params("default")

    def server_says(seconds):
        settings_dict = copy.deepcopy(settings.DATABASES["default"])
        settings_dict["OPTIONS"]["poolguard"] = {"statement_timeout": seconds}
        options = session_options(AliasConfig.from_settings_dict("default", settings_dict), None)
        with psycopg.connect(**{**params, "options": options}) as connection:
            return connection.execute("SHOW statement_timeout").fetchone()[0]

    with django_db_blocker.unblock():
        assert server_says(2147483.647) == "2147483647ms"
        assert server_says(0.001) == "1ms"
        assert server_says(0.0006) == "1ms"  # rounded, not cut to 0 (no timeout)
        with pytest.raises(psycopg.OperationalError, match="statement_timeout"):
            psycopg.connect(**{**params, "options": "-c statement_timeout=2147483648"}).close()
    for seconds, accepted in ((2147483.647, True), (2147483.648, False), (0.0005, False), (0.0006, True)):
        with override_settings(DATABASES=_guard(statement_timeout=seconds)):
            assert (_poolguard_messages() == []) is accepted, seconds


def test_the_documented_defaults_are_the_defaults():
    """docs/configuration.md lists every setting with the default the code uses."""
    import ast
    import re
    from pathlib import Path

    from django_poolguard.conf import ALIAS_SETTINGS, GLOBAL_SETTINGS, POOL_ARGUMENTS

    text = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    documented = dict(re.findall(r"^\| `(\w+)` \| `([^`]+)`", text, flags=re.MULTILINE))
    for table in (GLOBAL_SETTINGS, ALIAS_SETTINGS):
        for name, setting in table.items():
            if setting.default is not None:
                assert ast.literal_eval(documented[name]) == setting.default, name
    for name in ("min_size", "timeout", "max_waiting", "max_lifetime", "max_idle", "reconnect_timeout"):
        assert ast.literal_eval(documented[name]) == POOL_ARGUMENTS[name].default, name
