"""Secrets in session SQL: the redaction rule on its own (every form, and a property test over
random statements), then the real thing: statements run on real sessions of the test database
must never show their secret in ``poolactivity``, ``poolstats`` or the admin."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connections
from django.test import Client
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from django_poolguard.engine.side_connection import close_all
from django_poolguard.fleet.activity import QUERY_CHARS
from django_poolguard.fleet.redaction import redact_sql

SECRET = "Zq9hunter2"

# Each form as PostgreSQL accepts it, with the secret where a password goes.
FORMS = {
    "standard literal": f"ALTER ROLE app PASSWORD '{SECRET}'",
    "escape string": f"ALTER ROLE app PASSWORD E'{SECRET}\\'s'",
    "unicode string": f"ALTER ROLE app PASSWORD U&'{SECRET}\\0021'",
    "dollar quoted": f"ALTER ROLE app PASSWORD $${SECRET}$$",
    "tagged dollar quoted": f"ALTER ROLE app PASSWORD $pw${SECRET}$pw$",
    "comment before the literal": f"ALTER ROLE app PASSWORD /* rotated */ '{SECRET}'",
    "line comment before the literal": f"ALTER ROLE app PASSWORD -- rotated\n'{SECRET}'",
    "conninfo": f"SELECT dblink_connect('host=db.internal user=app password={SECRET}')",
    "user mapping": f"CREATE USER MAPPING FOR app SERVER remote OPTIONS (user 'app', password '{SECRET}')",
    "uri": f"SELECT dblink_connect('postgresql://app:{SECRET}@db.internal/shop')",
    "uri in a comment": f"SELECT 1 /* from postgresql://app:{SECRET}@db.internal/shop */",
    "conninfo in a comment": f"SELECT 1 -- host=db.internal password={SECRET}",
    "unsalted_md5 hash": f"UPDATE auth_user SET last_login = now() WHERE note = 'unsalted_md5$${SECRET}'",
    "crypt hash": f"INSERT INTO legacy VALUES (1, 'crypt$ab${SECRET}')",
    "pbkdf2 hash": f"INSERT INTO legacy VALUES (1, 'pbkdf2_sha256$1000000$salt${SECRET}')",
    "password column": f"UPDATE accounts SET \"password\" = '{SECRET}' WHERE id = 1",
    "a password longer than the cut": f"ALTER ROLE app PASSWORD '{SECRET * 60}'",
    "statement cut inside the literal": f"ALTER ROLE app PASSWORD '{SECRET}",
    "statement cut inside a uri": f"SELECT 1 -- postgresql://app:{SECRET}",
}


@pytest.mark.parametrize("sql", FORMS.values(), ids=FORMS.keys())
def test_every_form_is_masked(sql):
    redacted = redact_sql(sql)
    assert SECRET[:3] not in redacted, redacted
    assert "***" in redacted


@pytest.mark.parametrize("limit", [None, QUERY_CHARS, 40, 30, 10])
def test_redacted_before_cut(limit):
    # The old order (cut, then redact) showed "Zq9hu..." when the cut fell inside the literal.
    for sql in FORMS.values():
        assert SECRET[:3] not in redact_sql(sql, limit)


def test_what_stays_readable():
    assert (
        redact_sql("SELECT 'shipped' FROM orders WHERE id = 7") == "SELECT 'shipped' FROM orders WHERE id = 7"
    )
    assert redact_sql("ALTER ROLE app PASSWORD 'x' VALID UNTIL 'infinity'") == (
        "ALTER ROLE app PASSWORD '***' VALID UNTIL '***'"
    )
    assert redact_sql('SELECT "password" FROM t WHERE a = $1') == 'SELECT "password" FROM t WHERE a = $1'
    assert (
        redact_sql("/* ALTER ROLE app PASSWORD 'x' */ SELECT 1")
        == "/* ALTER ROLE app PASSWORD '***' */ SELECT 1"
    )
    assert redact_sql("SELECT 'a' -- postgresql://u:pw@h/db") == "SELECT '***' -- postgresql://u:***@h/db"
    assert redact_sql("SELECT 1 -- was md5" + "0f" * 16) == "SELECT 1 -- was ***"
    assert redact_sql(None) == redact_sql("") == ""


def test_a_backslash_in_a_standard_literal_masks_to_the_end():
    # With standard_conforming_strings = off, 'it\'s' is one literal: its end cannot be known here.
    assert redact_sql(f"SELECT 'it\\'s {SECRET}' AS password") == "SELECT '***"


def test_nested_comments_do_not_recurse():
    sql = "/*" * 5000 + f" PASSWORD '{SECRET}' " + "*/" * 5000
    assert SECRET not in redact_sql(sql)


# --- property: random statements built from the forms ----------------------------------------

_secret_chars = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=20)
_plain_chars = st.text("abcdefghijklmnopqrstuvwxyz0123456789-._~!*+", min_size=0, max_size=20)


@st.composite
def secret_statements(draw: Any) -> tuple[str, str]:
    """(sql, secret): the secret in one of the forms, behind random padding, maybe cut by the server."""
    tail = draw(_secret_chars)
    plain = draw(_plain_chars)
    form = draw(st.sampled_from(sorted(_FORMS)))
    secret = "Zq9" + (plain if form in _PLAIN_ONLY else tail)
    body = _FORMS[form](secret)
    assume(body is not None)
    keyword = draw(
        st.sampled_from(
            [
                "ALTER ROLE app PASSWORD ",
                "CREATE ROLE app LOGIN PASSWORD ",
                "CREATE USER MAPPING FOR app SERVER s OPTIONS (password ",
                "SELECT dblink_connect(",
                "SELECT * FROM dblink(",
                "ALTER SUBSCRIPTION s CONNECTION ",
                "UPDATE auth_user SET password = ",
                "SELECT ",
            ]
        )
    )
    # A bare literal is a secret only by what the statement says around it: a plain SELECT of one
    # is data. Connection strings, URIs and hashes are secrets by themselves.
    assume(keyword != "SELECT " or form not in _BARE)
    padding = draw(st.sampled_from(["", "/* " + "p" * draw(st.integers(0, 900)) + " */ ", "-- note\n"]))
    between = draw(st.sampled_from(["", " ", "/* c */ ", "-- c\n", "\n"]))
    sql = padding + keyword + between + body + draw(st.sampled_from(["", ")", " AS x", "; SELECT 1"]))
    if draw(st.booleans()):  # the server keeps only track_activity_query_size bytes
        sql = sql[: draw(st.integers(0, len(sql)))]
    return sql, secret


def _dollar(secret: str) -> str | None:
    for tag in ("$$", "$pw$", "$x1$"):
        if tag not in secret + "$":
            return f"{tag}{secret}{tag}"
    return None


_FORMS: dict[str, Callable[[str], str | None]] = {
    "standard": lambda s: "'" + s.replace("'", "''") + "'",
    "national": lambda s: "N'" + s.replace("'", "''") + "'",
    "escape": lambda s: "E'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'",
    "unicode": lambda s: "U&'" + s.replace("\\", "\\\\").replace("'", "''") + "'",
    "dollar": _dollar,
    "conninfo": lambda s: "'host=h user=u password=" + s.replace("'", "''") + "'",
    "uri literal": lambda s: f"'postgresql://u:{s}@h/db'",
    "uri comment": lambda s: f"1 /* postgresql://u:{s}@h/db */",
    "conninfo comment": lambda s: f"1 -- host=h password={s}\n",
    "hash literal": lambda s: f"'pbkdf2_sha256$1000000$salt${s}'",
    "hash comment": lambda s: f"1 /* was unsalted_md5$${s} */",
}
_BARE = {"standard", "national", "escape", "unicode", "dollar"}
_PLAIN_ONLY = {"uri literal", "uri comment", "conninfo comment", "hash comment"}


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(secret_statements(), st.one_of(st.none(), st.integers(0, 1200)))
def test_no_secret_survives_redaction_and_cut(statement, limit):
    sql, secret = statement
    assert secret[:3] not in redact_sql(sql, limit), "not even the secret's beginning survives"


# --- the real server: sessions whose SQL holds a secret ----------------------------------------

pytestmark_db = pytest.mark.django_db(transaction=True)

SERVER_FORMS = {
    # Statements PostgreSQL runs (a role changed inside a transaction that is never committed)...
    "standard literal": f"ALTER ROLE {{role}} PASSWORD '{SECRET}'",
    "escape string": f"ALTER ROLE {{role}} PASSWORD E'{SECRET}\\'s'",
    "unicode string": f"ALTER ROLE {{role}} PASSWORD U&'{SECRET}\\0021'",
    "dollar quoted": f"ALTER ROLE {{role}} PASSWORD $${SECRET}$$",
    "tagged dollar quoted": f"ALTER ROLE {{role}} PASSWORD $pw${SECRET}$pw$",
    "comment before the literal": f"ALTER ROLE {{role}} PASSWORD /* rotated */ '{SECRET}'",
    "a password longer than the cut": f"ALTER ROLE {{role}} PASSWORD '{SECRET * 60}'",
    # ...and secrets as data, the way a dblink or fdw call or a Django password update carries them.
    "conninfo": f"SELECT set_config('app.conninfo', 'host=db.internal password={SECRET}', true)",
    "uri": f"SELECT 'postgresql://app:{SECRET}@db.internal/shop' AS dsn",
    "unsalted_md5 hash": f"SELECT 'unsalted_md5$${SECRET}' AS stored",
    "crypt hash": f"SELECT 'crypt$ab${SECRET}' AS stored",
}


@pytest.fixture
def session_with(django_db_blocker: Any) -> Iterator[Callable[[str], int]]:
    """Run a statement on a session of its own, left idle in its transaction so it stays the
    session's query in pg_stat_activity (and the oldest transaction poolstats names)."""
    settings_dict = connections["default"].settings_dict
    role = f"{settings_dict['NAME']}_rotated"[:63]
    opened: list[psycopg.Connection[Any]] = []
    with django_db_blocker.unblock(), connections["default"].cursor() as cursor:
        cursor.execute(f'DROP ROLE IF EXISTS "{role}"')
        cursor.execute(f'CREATE ROLE "{role}" NOLOGIN')

    def run(sql: str) -> int:
        connection = psycopg.connect(
            host=settings_dict["HOST"] or None,
            port=settings_dict["PORT"] or None,
            dbname=settings_dict["NAME"],
            user=settings_dict["USER"] or None,
            password=settings_dict["PASSWORD"] or None,
            application_name="secret-holder",
        )
        opened.append(connection)
        connection.execute(sql.replace("{role}", f'"{role}"'))
        return connection.info.backend_pid

    yield run
    for connection in opened:
        connection.close()
    close_all()
    with django_db_blocker.unblock(), connections["default"].cursor() as cursor:
        cursor.execute(f'DROP ROLE IF EXISTS "{role}"')


def _command(*args: str) -> str:
    out = io.StringIO()
    try:
        call_command(*args, stdout=out)
    except SystemExit:
        pass  # poolstats --check exits with its status
    return out.getvalue()


@pytestmark_db
@pytest.mark.parametrize("sql", SERVER_FORMS.values(), ids=SERVER_FORMS.keys())
def test_real_sessions_never_show_the_secret(session_with, sql):
    pid = session_with(sql)
    listed = json.loads(_command("poolactivity", "--json", "--pid", str(pid)))
    [session] = listed["sessions"]
    assert session["state"] == "idle in transaction", session
    assert session["query"][:6] == sql[:6], "the statement itself is shown, masked"
    outputs = {
        "poolactivity": _command("poolactivity", "--pid", str(pid)),
        "poolactivity --json": json.dumps(listed),
        "poolstats": _command("poolstats"),
        "poolstats --json": _command("poolstats", "--json"),
    }
    assert f"pid {pid}" in outputs["poolstats"], "the session is the oldest transaction poolstats names"
    admin = Client()
    admin.force_login(User.objects.create_superuser("root", password="pw"))
    outputs["admin dashboard"] = admin.get("/admin/django_poolguard/pool/").content.decode()
    outputs["admin confirmation"] = admin.post(
        f"/admin/django_poolguard/pool/sessions/default/{pid}/terminate/"
    ).content.decode()
    assert str(pid) in outputs["admin confirmation"]
    for where, text in outputs.items():
        assert SECRET[:3] not in text, f"{where} shows the secret"
