"""When the database refuses every connection, ``PoolExhausted`` says why, without a password."""

from __future__ import annotations

import psycopg
import pytest
from django.db import connections

from django_poolguard import PoolExhausted
from django_poolguard.engine.pool import connect_error_text

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "hunter2-do-not-log"


def refused_message(make_alias, **keys: str) -> str:
    alias = make_alias(pool={"min_size": 0, "max_size": 2, "timeout": 1}, PASSWORD=SECRET, **keys)
    with pytest.raises(PoolExhausted) as caught:
        connections[alias].ensure_connection()
    return str(caught.value)


def test_a_missing_role_is_named(make_alias):
    message = refused_message(make_alias, USER="shop_no_such_role")
    assert "failed connection attempts; the last one failed with: OperationalError: FATAL:" in message
    assert 'role "shop_no_such_role" does not exist' in message
    assert SECRET not in message
    assert "is the database reachable" not in message


def test_a_missing_database_is_named(make_alias):
    message = refused_message(make_alias, NAME="shop_no_such_database")
    assert 'database "shop_no_such_database" does not exist' in message
    assert SECRET not in message


@pytest.mark.parametrize(
    "raw",
    [
        'connection failed: connection to server at "10.0.0.7", port 5432 failed: FATAL:  password '
        'authentication failed for user "shop"',
        f'invalid connection option: missing "=" after "password={SECRET} host" in connection info string',
        f"password = '{SECRET} with spaces' host=db: could not translate host name",
        f"could not connect to postgresql://shop:{SECRET}@db:5432/shop",
    ],
)
def test_no_password_survives(raw):
    text = connect_error_text(psycopg.OperationalError(raw))
    assert SECRET not in text and "hunter2" not in text
    assert text.startswith("OperationalError: ")
    if "FATAL" in raw:
        assert text == 'OperationalError: FATAL: password authentication failed for user "shop"'
