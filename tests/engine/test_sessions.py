"""Sessions are labelled and bounded by PostgreSQL itself, set once at connect time."""

from __future__ import annotations

import os
import socket

import pytest
from django.db import OperationalError, connections, transaction

pytestmark = pytest.mark.django_db(transaction=True)


def _settings(alias: str, *names: str) -> list[str]:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT " + ", ".join(f"current_setting('{n}')" for n in names))
        return list(cursor.fetchone())


def test_application_name_names_workload_alias_host_and_pid(make_alias):
    alias = make_alias(poolguard={"workload": "web"})
    [name] = _settings(alias, "application_name")
    assert name == f"web:{alias}:{socket.gethostname()}:{os.getpid()}"[:63]
    connections[alias].close()


def test_user_application_name_is_kept(make_alias):
    alias = make_alias()
    connections.settings[alias]["OPTIONS"]["application_name"] = "billing"
    assert _settings(alias, "application_name") == ["billing"]
    connections[alias].close()


def test_timeouts_are_applied_at_connect_time(make_alias):
    alias = make_alias(poolguard={"statement_timeout": 0.5, "idle_in_transaction_timeout": 20})
    assert _settings(alias, "statement_timeout", "idle_in_transaction_session_timeout") == ["500ms", "20s"]
    connections[alias].close()


def test_statement_timeout_cancels_a_query_past_it(make_alias):
    alias = make_alias(poolguard={"statement_timeout": 0.3})
    with pytest.raises(OperationalError, match="statement timeout"):
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT pg_sleep(5)")
    # The pooled session is still usable afterwards.
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
    connections[alias].close()


def test_timeouts_cost_no_round_trip_per_checkout(make_alias):
    """The settings travel in the startup packet: a checkout runs only the caller's queries."""
    alias = make_alias(pool={"min_size": 0, "max_size": 1, "timeout": 2}, poolguard={"statement_timeout": 10})
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        [backend] = cursor.fetchone()
    connections[alias].close()

    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT xact_start IS NULL, query FROM pg_stat_activity WHERE pid = %s", [backend])
        before = cursor.fetchone()
    for _ in range(5):
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT 42")
        connections[alias].close()
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", [backend])
        [last_query] = cursor.fetchone()
    assert before is not None
    assert last_query == "SELECT 42", "no SET statement may run after the caller's query"


def test_atomic_and_rollback_behave_as_in_django(make_alias):
    from tests.testapp.models import Item

    alias = make_alias()
    with pytest.raises(RuntimeError):
        with transaction.atomic(using=alias):
            Item.objects.using(alias).create(name="lost")
            raise RuntimeError
    assert not Item.objects.using(alias).filter(name="lost").exists()
    connections[alias].close()


def test_timeouts_by_set_run_once_per_physical_connection(make_alias):
    """``timeouts_via: "set"``: one SET when the pool opens the connection, none per checkout,
    and the session keeps it across psycopg_pool's return of the connection."""
    alias = make_alias(
        pool={"min_size": 0, "max_size": 1, "timeout": 2},
        poolguard={"statement_timeout": 0.5, "idle_in_transaction_timeout": 20, "timeouts_via": "set"},
    )
    with connections[alias].cursor() as cursor:
        # "session": set by SET; "client" would mean the startup packet carried it.
        cursor.execute(
            "SELECT pg_backend_pid(), setting, source FROM pg_settings WHERE name = 'statement_timeout'"
        )
        backend, first, source = cursor.fetchone()
    connections[alias].close()
    assert (first, source) == ("500", "session")
    for _ in range(5):
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT 42")
        connections[alias].close()
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", [backend])
        [last_query] = cursor.fetchone()
    assert last_query == "SELECT 42", "no SET may run per checkout"
    assert _settings(alias, "statement_timeout", "idle_in_transaction_session_timeout") == ["500ms", "20s"]
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        assert cursor.fetchone() == (backend,)
    connections[alias].close()


def test_timeouts_by_set_without_a_pool(make_alias):
    alias = make_alias(pool={}, poolguard={"statement_timeout": 0.3, "timeouts_via": "set"})
    assert connections[alias].pool is None
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT source FROM pg_settings WHERE name = 'statement_timeout'")
        assert cursor.fetchone() == ("session",)
    with pytest.raises(OperationalError, match="statement timeout"):
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT pg_sleep(5)")
    connections[alias].close()


def test_the_database_check_finds_no_pooler_in_front_of_postgresql(make_alias):
    from django_poolguard.engine.session_timeouts import check_session_timeouts

    by_set = make_alias(poolguard={"statement_timeout": 5, "timeouts_via": "set"})
    by_server = make_alias(poolguard={"statement_timeout": 5, "timeouts_via": "server"})
    messages = check_session_timeouts(databases=[by_set, by_server, "default"])
    assert [(m.id, by_server in m.msg) for m in messages] == [("django_poolguard.W013", True)]
    assert "statement_timeout = 0 ms (expected 5000 ms)" in messages[0].msg


def test_an_unknown_timeouts_via_is_refused_naming_the_setting(make_alias):
    from django.core.exceptions import ImproperlyConfigured

    alias = make_alias(poolguard={"statement_timeout": 5, "timeouts_via": "options"})
    with pytest.raises(
        ImproperlyConfigured,
        match=rf"DATABASES\['{alias}'\]\['OPTIONS'\]\['poolguard'\]\['timeouts_via'\] is 'options'",
    ):
        connections[alias].ensure_connection()
    # The database check leaves the bad value to E015 instead of failing on it.
    from django_poolguard.engine.session_timeouts import check_session_timeouts

    assert check_session_timeouts(databases=[alias]) == []
