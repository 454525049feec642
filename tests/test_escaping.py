"""Text from outside is shown, never obeyed: ESC sequences in session SQL and role names reach
``poolactivity``/``poolstats`` escaped, and CR/LF in a request path, a thread name or a task id
cannot forge a log line."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from django.core.management import call_command
from django.db import connections
from django.test import Client

from django_poolguard.celery import task_label
from django_poolguard.engine.side_connection import close_all
from django_poolguard.escaping import escape_controls
from tests.watching import recording

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_watchdog")]

# Set the terminal's title, clear the screen, ring the bell: what session SQL must not do.
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x1b[31mred\x9b1m\u202edesrever"
SHOWN = "\\x1b]0;pwned\\x07\\x1b[2J\\x1b[31mred\\x9b1m\\u202edesrever"


def test_escape_controls():
    assert escape_controls(HOSTILE) == SHOWN
    assert escape_controls("GET /a\r\nWARNING forged\t\x00\x7f") == "GET /a\\r\\nWARNING forged\\t\\x00\\x7f"
    assert escape_controls("café /api/ü\\n") == "café /api/ü\\n", "printable text and backslashes stay"
    assert escape_controls(escape_controls(HOSTILE)) == SHOWN, "escaping twice changes nothing"


@pytest.fixture
def hostile_session(django_db_blocker: Any) -> Iterator[Callable[[], int]]:
    """A session of a role whose name holds an ESC sequence, idle in a transaction whose last
    statement holds more: the oldest transaction, as poolstats shows it."""
    settings_dict = connections["default"].settings_dict
    role = f"{settings_dict['NAME'][:30]}\x1b[2Jrole"
    opened: list[psycopg.Connection[Any]] = []
    with django_db_blocker.unblock(), connections["default"].cursor() as cursor:
        cursor.execute(f'DROP ROLE IF EXISTS "{role}"')
        cursor.execute(f'CREATE ROLE "{role}" LOGIN')

    def start() -> int:
        connection = psycopg.connect(
            host=settings_dict["HOST"] or None,
            port=settings_dict["PORT"] or None,
            dbname=settings_dict["NAME"],
            user=role,
        )
        opened.append(connection)
        connection.execute(f"SELECT '{HOSTILE}' AS banner")
        return connection.info.backend_pid

    yield start
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
        pass
    return out.getvalue()


def test_terminal_output_shows_control_characters_escaped(hostile_session):
    pid = hostile_session()
    activity = _command("poolactivity", "--pid", str(pid))
    stats = _command("poolstats")
    check = _command("poolstats", "--check")
    for text in (activity, stats, check):
        assert not any(c in text for c in "\x1b\x07\x9b\u202e"), text
    assert "\\x1b[2Jrole" in activity, "the role name, escaped"
    assert "\\x1b]0;pwned\\x07" in activity and f"pid {pid}" in stats and "\\x1b]0;pwned\\x07" in stats


# --- log lines ------------------------------------------------------------------------------


def _first_line(record: logging.LogRecord) -> str:
    return record.getMessage().split("\n", 1)[0]


def test_a_request_path_with_crlf_is_one_log_line(make_alias, client, settings, caplog):
    settings.ROOT_URLCONF = "tests.leak_views"
    alias = make_alias(pool={"min_size": 0, "max_size": 2, "timeout": 3}, poolguard={"leak_threshold": 0.3})
    with recording(alias) as signals:
        response = Client().get(f"/report/{alias}/x%0D%0AWARNING%20forged%1B%5B2J/", {"hold": "1.0"})
        assert response.status_code == 200
        event = signals.wait("leak_detected", kind="leak")["event"]
    connections[alias].close()
    [record] = [r for r in caplog.records if r.getMessage().startswith("Connection leak suspected")]
    # The path is one line of the message; the acquire stack below it is the only multi-line part.
    assert f"for GET /report/{alias}/x\\r\\nWARNING forged\\x1b[2J/, taken at" in _first_line(record)
    lines = record.getMessage().splitlines()
    assert not any(line.startswith("WARNING forged") for line in lines)
    assert "\x1b" not in record.getMessage()
    assert event.context == f"GET /report/{alias}/x\\r\\nWARNING forged\\x1b[2J/"


def test_a_thread_name_with_crlf_is_one_log_line(make_alias, caplog):
    alias = make_alias(pool={"min_size": 0, "max_size": 2, "timeout": 3}, poolguard={"leak_threshold": 60})

    def leak() -> None:
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT 1")  # and exits without closing: reclaimed

    with recording(alias) as signals:
        thread = threading.Thread(target=leak, name="export\r\nERROR forged")
        thread.start()
        thread.join()
        signals.wait("connection_reclaimed")
    [record] = [r for r in caplog.records if r.getMessage().startswith("Reclaimed a connection")]
    assert "from thread export\\r\\nERROR forged: the thread exited" in _first_line(record)
    assert not any(line.startswith("ERROR forged") for line in record.getMessage().splitlines())


@pytest.mark.urls("tests.testapp.shed")
def test_answered_503_names_a_crlf_holder_on_one_line(make_alias, holders, caplog, monkeypatch):
    from django_poolguard import middleware

    monkeypatch.setattr(middleware, "_last_logged", {})
    monkeypatch.setattr(middleware, "_unlogged", {})
    alias = make_alias(pool={"min_size": 0, "max_size": 1, "timeout": 0.3})
    holders(alias, name="report\r\nCRITICAL forged")
    response = Client().get("/query/", {"alias": alias})
    assert response.status_code == 503
    [record] = [r for r in caplog.records if r.getMessage().startswith("Answered 503")]
    assert "\n" not in record.getMessage() and "\r" not in record.getMessage()
    assert "held by thread report\\r\\nCRITICAL forged" in record.getMessage()


def test_pool_exhausted_names_a_crlf_holder_on_one_line(make_alias, holders):
    from django_poolguard import PoolExhausted

    alias = make_alias(pool={"min_size": 0, "max_size": 1, "timeout": 0.3})
    holders(alias, name="nightly\r\nERROR forged")
    with pytest.raises(PoolExhausted) as raised:
        connections[alias].ensure_connection()
    assert "held by thread nightly\\r\\nERROR forged" in str(raised.value)
    assert "\n" not in str(raised.value), "error trackers and Django's own 500 log print it as is"


def test_a_task_id_with_crlf_makes_a_one_line_label():
    class Task:
        name = "shop.tasks.export"

    assert task_label(Task(), "42\r\nERROR forged") == "task shop.tasks.export[42\\r\\nERROR forged]"
