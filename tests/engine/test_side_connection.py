"""poolguard's side connection connects exactly like its alias (the user's ``OPTIONS["options"]``,
``assume_role``), plus its own statement timeout, on the real server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connections

from django_poolguard.engine.side_connection import STATEMENT_TIMEOUT_MS, close_all, side_cursor
from django_poolguard.models import LeakEvent
from tests.watching import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_watchdog")]

SCHEMA = "poolguard_app_schema"


@pytest.fixture
def app_schema(django_db_blocker: Any) -> Iterator[str]:
    """A schema holding its own copy of the LeakEvent table, as a project keeping its tables in
    ``app`` (``-c search_path=app``) has it."""
    table = LeakEvent._meta.db_table
    with django_db_blocker.unblock(), connections["default"].cursor() as cursor:
        cursor.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        cursor.execute(f"CREATE SCHEMA {SCHEMA}")
        cursor.execute(f"CREATE TABLE {SCHEMA}.{table} (LIKE public.{table} INCLUDING ALL)")
    yield SCHEMA
    close_all()
    with django_db_blocker.unblock(), connections["default"].cursor() as cursor:
        cursor.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")


@pytest.fixture(autouse=True)
def _close_side_connections() -> Iterator[None]:
    yield
    close_all()  # so the test database can be dropped


def with_options(alias: str, **options: Any) -> str:
    connections.settings[alias]["OPTIONS"].update(options)
    return alias


def test_side_connection_keeps_the_users_options_and_adds_its_timeout(make_alias, app_schema):
    alias = with_options(
        make_alias(poolguard={"statement_timeout": 30}), options=f"-c search_path={app_schema},public"
    )
    with side_cursor(alias) as cursor:
        cursor.execute("SELECT current_setting('search_path'), current_setting('statement_timeout')")
        search_path, timeout = cursor.fetchone()
    close_all()
    assert search_path == f"{app_schema},public"
    # Its own timeout wins over the alias's 30 s: the watchdog must never block that long.
    assert timeout == f"{STATEMENT_TIMEOUT_MS // 1000}s"


def test_side_connection_assumes_the_aliases_role(make_alias, django_db_blocker):
    role = f"{connections['default'].settings_dict['NAME']}_assumed"[:63]
    with connections["default"].cursor() as cursor:
        cursor.execute(f'DROP ROLE IF EXISTS "{role}"')
        cursor.execute(f'CREATE ROLE "{role}" NOLOGIN')
        cursor.execute(f'GRANT "{role}" TO CURRENT_USER')
    try:
        alias = with_options(make_alias(), assume_role=role)
        with side_cursor(alias) as cursor:
            cursor.execute("SELECT current_user")
            assert cursor.fetchone()[0] == role
    finally:
        close_all()
        with connections["default"].cursor() as cursor:
            cursor.execute(f'DROP ROLE IF EXISTS "{role}"')


class LeakEventsToAlias:
    target = "default"

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        return self.target if model is LeakEvent else None


def test_leak_history_lands_in_the_aliases_schema(make_alias, holders, app_schema, settings):
    alias = with_options(
        make_alias(pool={"min_size": 0, "max_size": 2, "timeout": 3}, poolguard={"leak_threshold": 0.2}),
        options=f"-c search_path={app_schema}",
    )
    LeakEventsToAlias.target = alias
    settings.DATABASE_ROUTERS = [f"{__name__}.LeakEventsToAlias"]
    holders(alias, name="schema-holder")

    def rows_in(schema: str) -> int:
        with connections["default"].cursor() as cursor:
            cursor.execute(
                f"SELECT count(*) FROM {schema}.{LeakEvent._meta.db_table} WHERE alias = %s AND thread = %s",
                [alias, "schema-holder"],
            )
            return int(cursor.fetchone()[0])

    wait_until(lambda: rows_in(app_schema) == 1, what=f"the LeakEvent row in schema {app_schema}")
    assert rows_in("public") == 0
