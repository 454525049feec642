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
            "django_poolguard.E011",
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
