"""The engine behaves like Django's own pooled backend where code written for that backend looks:
the errors it raises and the messages it matches on. Each case here was found by running
Django's own ``tests/backends`` with this engine (``tests/django_suite/run.py``)."""

from __future__ import annotations

import copy
import threading
import time

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import OperationalError, connections
from django.test import override_settings
from psycopg_pool import PoolTimeout, TooManyRequests

from django_poolguard import PoolExhausted
from django_poolguard.engine.pool import get_pool

pytestmark = pytest.mark.django_db(transaction=True)


def test_exhausted_pool_raises_psycopg_pool_timeout_from_connect(make_alias, holders):
    # Django's backends.postgresql.tests.Tests.test_connect_pool: connect() on a full pool
    # raises psycopg_pool.PoolTimeout with Django's backend.
    alias = make_alias(pool={"min_size": 0, "max_size": 1, "timeout": 0.3})
    holders(alias, name="report")
    wrapper = connections[alias].copy()
    try:
        with pytest.raises(PoolTimeout) as caught:
            wrapper.connect()
    finally:
        wrapper.close()
    assert isinstance(caught.value, PoolExhausted)
    assert "held by thread report" in str(caught.value)


def test_exhausted_pool_stays_pool_exhausted_through_django_error_translation(make_alias, holders):
    # PoolExhausted is a psycopg error too; Django's DatabaseErrorWrapper must not turn it into
    # a bare OperationalError that loses the holders (and the middleware's 503).
    alias = make_alias(pool={"min_size": 0, "max_size": 1, "timeout": 0.3})
    holders(alias, name="report")
    with pytest.raises(PoolExhausted) as caught:
        connections[alias].cursor()
    assert type(caught.value) is PoolExhausted
    assert isinstance(caught.value, OperationalError) and isinstance(caught.value, PoolTimeout)
    assert "held by thread report" in str(caught.value)
    assert connections[alias].errors_occurred is True, "as Django flags any OperationalError"


def test_full_wait_queue_raises_too_many_requests(make_alias, holders):
    # Django's backend lets psycopg_pool.TooManyRequests out when max_waiting is reached.
    alias = make_alias(pool={"min_size": 0, "max_size": 1, "timeout": 3, "max_waiting": 1})
    holders(alias, name="slow-report")
    errors: list[BaseException] = []

    def wait_for_a_connection() -> None:
        try:
            connections[alias].ensure_connection()
        except PoolExhausted as exc:
            errors.append(exc)
        finally:
            connections[alias].close()

    waiter = threading.Thread(target=wait_for_a_connection, name="waiter", daemon=True)
    waiter.start()
    deadline = time.monotonic() + 5
    while get_pool(alias).state()["waiting"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)

    with pytest.raises(TooManyRequests) as caught:
        connections[alias].ensure_connection()
    assert isinstance(caught.value, PoolExhausted) and caught.value.queue_full is True
    waiter.join(5)
    assert len(errors) == 1 and not isinstance(errors[0], TooManyRequests), "the waiter timed out"


def test_persistent_connections_error_keeps_djangos_message(django_db_blocker):
    # Django's test_pooling_not_support_persistent_connections matches on Django's sentence.
    settings_dict = copy.deepcopy(connections["default"].settings_dict)
    settings_dict["OPTIONS"]["pool"] = True
    settings_dict["CONN_MAX_AGE"] = 10
    wrapper = connections["default"].__class__(settings_dict, alias="pg_persistent")
    with pytest.raises(ImproperlyConfigured) as caught:
        wrapper.pool  # noqa: B018 (the property builds the pool)
    assert "Pooling doesn't support persistent connections." in str(caught.value)
    assert "DATABASES['pg_persistent']" in str(caught.value) and "CONN_MAX_AGE to 0" in str(caught.value)
    assert get_pool("pg_persistent") is None


@pytest.mark.parametrize("health_checks", [True, False])
def test_pool_check_option_overrides_conn_health_checks(make_alias, health_checks):
    # Django 6.1's test_pool_check_can_be_overridden: OPTIONS["pool"]["check"] wins.
    checked: list[object] = []

    def custom_check(conn: object) -> None:
        checked.append(conn)

    alias = make_alias(
        pool={"min_size": 0, "max_size": 1, "check": custom_check}, CONN_HEALTH_CHECKS=health_checks
    )
    for _ in range(2):
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT 1")
        connections[alias].close()
    assert get_pool(alias)._check is custom_check
    assert len(checked) == 2, "psycopg_pool runs the check on every checkout"


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES:UserWarning")
def test_system_checks_accept_the_pool_check_option():
    from django_poolguard.checks import check_aliases

    databases = copy.deepcopy(settings.DATABASES)
    databases["default"]["OPTIONS"]["pool"] = {"max_size": 4, "check": lambda conn: None}
    with override_settings(DATABASES=databases):
        assert [e.id for e in check_aliases()] == []
    databases["default"]["OPTIONS"]["pool"] = {"max_size": 4, "configure": lambda conn: None}
    with override_settings(DATABASES=databases):
        assert [e.id for e in check_aliases()] == ["django_poolguard.E003"], "Django passes configure"


def test_wrapper_with_pool_off_bypasses_its_alias_pool(make_alias):
    # Django's no_pool_connection() (test_connect_role, test_connect_and_rollback, ...): a copy
    # of a pooled alias with OPTIONS["pool"] = False opens its own connection with its own params.
    alias = make_alias(pool={"min_size": 0, "max_size": 1, "timeout": 1})
    connections[alias].ensure_connection()  # the alias's pool exists and is in use
    pool = get_pool(alias)
    wrapper = connections[alias].copy()
    wrapper.settings_dict = copy.deepcopy(connections[alias].settings_dict)
    wrapper.settings_dict["OPTIONS"]["pool"] = False
    wrapper.settings_dict["OPTIONS"]["options"] = "-c search_path=poolguard_bypass"
    try:
        assert wrapper.pool is None
        with wrapper.cursor() as cursor:  # would time out on the pool (max_size 1, in use)
            cursor.execute("SHOW search_path")
            assert cursor.fetchone()[0] == "poolguard_bypass"
        assert wrapper.connection.info.dbname == connections[alias].settings_dict["NAME"]
        assert len(pool.ledger) == 1, "only the alias's own checkout is in its pool's ledger"
    finally:
        wrapper.close()
    assert get_pool(alias) is pool


@pytest.mark.parametrize("profile", [False, True])
def test_copy_is_recorded_in_connection_queries_as_with_djangos_backend(make_alias, settings, profile):
    # Django's PostgreSQL debug cursor records copy(); a generic one silently would not.
    from django.test.utils import CaptureQueriesContext

    settings.POOLGUARD = {**settings.POOLGUARD, "PROFILE": profile}
    alias = make_alias(pool={"min_size": 0, "max_size": 2, "timeout": 2})
    copy_sql = "COPY (SELECT 1) TO STDOUT (FORMAT CSV)"
    with CaptureQueriesContext(connections[alias]) as captured, connections[alias].cursor() as cursor:
        with cursor.copy(copy_sql) as copy_:
            assert b"".join(bytes(row) for row in copy_) == b"1\n"
    assert [query["sql"] for query in captured.captured_queries] == [copy_sql]
