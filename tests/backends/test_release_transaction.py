"""Transaction release mode: a checkout goes back to the pool whenever it is idle in autocommit,
and stays while its session matters (transaction, server-side cursor, unread rows, session state,
``hold_connection()``)."""

from __future__ import annotations

import copy
import json
import threading
import time

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import InterfaceError, connections, transaction

import django_poolguard
from django_poolguard.backends.postgresql.base import DatabaseWrapper, TransactionReleasingWrapper
from django_poolguard.engine.pool import get_pool
from tests.testapp.models import Item
from tests.watching import recording

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def tx_alias(make_alias):
    return make_alias(pool={"min_size": 0, "max_size": 2, "timeout": 3}, poolguard={"release": "transaction"})


def held(alias: str) -> int:
    return len(get_pool(alias).ledger)


def checkout(alias: str):
    [entry] = get_pool(alias).ledger.checkouts()
    return entry


def count(alias: str) -> int:
    return Item.objects.using(alias).count()


def test_a_query_outside_atomic_gives_the_connection_back(tx_alias):
    wrapper = connections[tx_alias]
    assert count(tx_alias) == 0
    pool = get_pool(tx_alias)
    assert held(tx_alias) == 0 and wrapper.connection is None
    assert pool.state()["idle"] == 1
    assert pool.ledger.released_total == 1
    Item.objects.using(tx_alias).create(name="a")
    assert list(Item.objects.using(tx_alias).values_list("name", flat=True)) == ["a"]
    assert held(tx_alias) == 0 and pool.ledger.released_total == 3
    assert pool.ledger.acquired_total == pool.ledger.returned_total == 3


def test_request_mode_keeps_the_connection_until_closed(make_alias):
    alias = make_alias(pool={"min_size": 0, "max_size": 2, "timeout": 3})
    # No release machinery at all on a request-mode alias: its checkouts cost what they did.
    assert type(connections[alias]) is DatabaseWrapper
    assert count(alias) == 0
    assert held(alias) == 1 and connections[alias].connection is not None
    assert get_pool(alias).ledger.released_total == 0
    connections[alias].close()
    assert held(alias) == 0


def test_the_release_mode_picks_the_wrapper_class(tx_alias):
    wrapper = connections[tx_alias]
    assert type(wrapper) is TransactionReleasingWrapper
    assert type(wrapper.copy()) is TransactionReleasingWrapper
    settings_dict = {**wrapper.settings_dict, "OPTIONS": {"pool": {"max_size": 1}}}
    assert type(DatabaseWrapper(settings_dict, "plain")) is DatabaseWrapper
    assert type(copy.copy(wrapper)) is TransactionReleasingWrapper
    assert repr(wrapper) == f"<DatabaseWrapper vendor='postgresql' alias='{tx_alias}'>"


def test_a_query_made_while_a_cursor_is_being_opened_does_not_pull_the_connection_away(tx_alias):
    wrapper = connections[tx_alias]
    real_ensure_connection = wrapper.ensure_connection

    def ensure_connection_then_configure() -> None:
        opening = wrapper.connection is None
        real_ensure_connection()
        if opening:  # e.g. an instrumentation hook's query on each new connection
            with wrapper.cursor() as cursor:
                cursor.execute("SELECT 1")

    wrapper.ensure_connection = ensure_connection_then_configure
    try:
        assert count(tx_alias) == 0
    finally:
        del wrapper.ensure_connection
    assert held(tx_alias) == 0


def test_atomic_holds_until_the_outermost_block_ends(tx_alias):
    with transaction.atomic(using=tx_alias):
        Item.objects.using(tx_alias).create(name="a")
        assert held(tx_alias) == 1
        with transaction.atomic(using=tx_alias):
            Item.objects.using(tx_alias).create(name="b")
        assert held(tx_alias) == 1, "a savepoint's end is not the transaction's"
        assert count(tx_alias) == 2
        assert held(tx_alias) == 1
    assert held(tx_alias) == 0
    assert connections[tx_alias].connection is None
    assert count(tx_alias) == 2, "committed"


def test_rollback_then_release(tx_alias):
    with pytest.raises(ZeroDivisionError), transaction.atomic(using=tx_alias):
        Item.objects.using(tx_alias).create(name="a")
        raise ZeroDivisionError
    assert held(tx_alias) == 0
    assert count(tx_alias) == 0


def test_on_commit_callbacks_run_before_the_release(tx_alias):
    seen = []
    with transaction.atomic(using=tx_alias):
        Item.objects.using(tx_alias).create(name="a")
        transaction.on_commit(lambda: seen.append(held(tx_alias)), using=tx_alias)
    assert seen == [1], "the callback ran while the transaction's connection was still held"
    assert held(tx_alias) == 0


def test_server_side_cursor_is_held_until_exhausted(tx_alias):
    Item.objects.using(tx_alias).bulk_create(Item(name=str(i)) for i in range(5))
    rows = Item.objects.using(tx_alias).iterator(chunk_size=2)
    assert next(rows).name == "0"
    assert held(tx_alias) == 1
    # Another query meanwhile cannot take the WITH HOLD cursor's session away.
    assert count(tx_alias) == 5
    assert held(tx_alias) == 1
    assert checkout(tx_alias).held_reason == "server-side cursor open"
    assert [item.name for item in rows] == ["1", "2", "3", "4"]
    assert held(tx_alias) == 0


def test_cursor_with_unread_rows_keeps_the_connection(tx_alias):
    wrapper = connections[tx_alias]
    reader = wrapper.cursor()
    reader.execute("SELECT generate_series(1, 3)")
    assert reader.fetchone() == (1,)
    with wrapper.cursor() as other:
        other.execute("SELECT 1")
    assert held(tx_alias) == 1
    assert checkout(tx_alias).held_reason == "cursor with unread rows open"
    assert reader.fetchall() == [(2,), (3,)]
    assert held(tx_alias) == 0, "exhausted: given back without waiting for close()"
    reader.execute("SELECT 7")  # a kept cursor takes a connection again
    assert reader.fetchall() == [(7,)]
    reader.close()
    assert held(tx_alias) == 0


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("SELECT pg_advisory_lock(42)", "session advisory lock"),
        ("LISTEN poolguard_channel", "LISTEN"),
        ("CREATE TEMPORARY TABLE scratch (id int)", "temporary table"),
        ("SET search_path TO public", "SET by the application"),
        ("SELECT set_config('application_name', 'x', false)", "SET by the application"),
        ("PREPARE one AS SELECT 1", "prepared statement"),
    ],
)
def test_session_state_pins_the_connection_until_close(tx_alias, sql, reason):
    wrapper = connections[tx_alias]
    with wrapper.cursor() as cursor:
        cursor.execute(sql)
    first = wrapper.connection
    assert held(tx_alias) == 1 and checkout(tx_alias).held_reason == reason
    assert count(tx_alias) == 0
    assert wrapper.connection is first, "the same session for the rest of the request"
    assert get_pool(tx_alias).ledger.pinned_by_reason == {reason: 1}
    wrapper.close()  # the request's end
    assert held(tx_alias) == 0
    assert count(tx_alias) == 0
    assert held(tx_alias) == 0, "unpinned with the checkout that was pinned"


@pytest.mark.parametrize(
    "sql",
    ["SELECT pg_advisory_xact_lock(42)", "SET LOCAL statement_timeout = 1000", "SELECT 'SET x'"],
)
def test_transaction_scoped_statements_do_not_pin(tx_alias, sql):
    with connections[tx_alias].cursor() as cursor:
        cursor.execute(sql)
    assert held(tx_alias) == 0


def test_a_transaction_begun_by_raw_sql_is_held(tx_alias):
    wrapper = connections[tx_alias]
    with wrapper.cursor() as cursor:
        cursor.execute("BEGIN")
    assert held(tx_alias) == 1 and checkout(tx_alias).held_reason == "transaction open"
    with wrapper.cursor() as cursor:
        cursor.execute("INSERT INTO testapp_item (name) VALUES ('x')")
        cursor.execute("COMMIT")
    assert held(tx_alias) == 0
    assert count(tx_alias) == 1


def test_hold_connection_opts_out(tx_alias):
    @django_poolguard.hold_connection()
    def view() -> int:
        count(tx_alias)
        first = connections[tx_alias].connection
        count(tx_alias)
        assert connections[tx_alias].connection is first
        assert checkout(tx_alias).held_reason == "hold_connection()"
        return held(tx_alias)

    assert view() == 1
    assert held(tx_alias) == 0, "given back on leaving the outermost hold"
    with django_poolguard.hold_connection(), django_poolguard.hold_connection():
        count(tx_alias)
    assert held(tx_alias) == 0


def test_a_pool_of_one_serves_threads_that_would_wait_on_each_other(make_alias):
    alias = make_alias(
        pool={"min_size": 0, "max_size": 1, "timeout": 1}, poolguard={"release": "transaction"}
    )
    errors: list[BaseException] = []

    def request() -> None:
        try:
            count(alias)
            time.sleep(0.5)  # the slow external call, holding nothing
            Item.objects.using(alias).create(name="order")
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=request) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == []
    assert count(alias) == 4


def test_leaks_are_still_detected_per_checkout(make_alias, fast_watchdog):
    alias = make_alias(
        pool={"min_size": 0, "max_size": 2, "timeout": 3},
        poolguard={"release": "transaction", "leak_threshold": 0.3, "hoard_threshold": 60},
    )
    count(alias)  # released: nothing to report
    with recording(alias) as signals:
        with transaction.atomic(using=alias):
            count(alias)
            event = signals.wait("leak_detected", kind="leak")["event"]
            assert "test_release_transaction.py" in event.origin
        assert held(alias) == 0


def test_a_bad_release_mode_names_the_setting(make_alias):
    alias = make_alias(poolguard={"release": "statement"})
    with pytest.raises(ImproperlyConfigured) as raised:
        connections[alias].ensure_connection()
    message = str(raised.value)
    assert "release" in message and "'statement'" in message and '"transaction"' in message


def test_a_closed_cursor_still_refuses_to_execute(tx_alias):
    with connections[tx_alias].cursor() as cursor:
        cursor.execute("SELECT 1")
    with pytest.raises(InterfaceError):
        cursor.execute("SELECT 1")
    assert held(tx_alias) == 0


def test_copy_on_a_kept_cursor_takes_a_connection_again(tx_alias):
    Item.objects.using(tx_alias).create(name="a")
    cursor = connections[tx_alias].cursor()
    cursor.execute("SELECT 1")
    cursor.fetchall()
    assert held(tx_alias) == 0
    with cursor.copy("COPY testapp_item (name) TO STDOUT") as copy:
        assert [bytes(block) for block in copy] == [b"a\n"]
    cursor.close()
    assert held(tx_alias) == 0


def test_with_the_profile_on_each_statement_is_timed_and_its_connection_released(tx_alias, settings):
    settings.POOLGUARD = {**settings.POOLGUARD, "PROFILE": True}
    wrapper = connections[tx_alias]
    cursor = wrapper.cursor()
    ledger = get_pool(tx_alias).ledger
    cursor.execute("SELECT pg_sleep(0.2)")
    cursor.fetchall()
    assert held(tx_alias) == 0 and ledger.released_total == 1
    cursor.execute("SELECT 1")  # a kept cursor: timed on the checkout it takes again
    cursor.fetchall()
    cursor.close()
    assert held(tx_alias) == 0 and ledger.released_total == 2
    wrapper.force_debug_cursor = True  # Django's debug cursor (DEBUG = True) is timed and released too
    try:
        assert count(tx_alias) == 0
    finally:
        wrapper.force_debug_cursor = False
    assert held(tx_alias) == 0 and ledger.released_total == 3
    [row] = ledger.profile.rows()
    assert row["label"] == f"thread {threading.current_thread().name}"
    assert row["checkouts"] == 3 and row["queries"] == 3
    assert row["db_s"] >= 0.2  # pg_sleep ran on the database


def test_snapshots_and_poolstats_show_the_mode_releases_and_why_a_checkout_is_held(tx_alias, make_alias):
    import io

    from django.core.management import call_command

    from django_poolguard.fleet.schema import Unreadable, read_entry
    from django_poolguard.fleet.snapshots import pool_snapshot, process_snapshot

    other = make_alias()
    count(other)
    Item.objects.using(tx_alias).bulk_create(Item(name=str(i)) for i in range(3))
    with connections[tx_alias].cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(7)")
    rows = Item.objects.using(tx_alias).iterator(chunk_size=1)
    next(rows)
    snapshot = pool_snapshot(get_pool(tx_alias))
    assert snapshot["release"] == "transaction" and snapshot["released_total"] == 1
    assert snapshot["pinned_by_reason"] == {"session advisory lock": 1}
    [held_checkout] = snapshot["checkouts"]
    assert held_checkout["held_reason"] == "session advisory lock"
    assert pool_snapshot(get_pool(other))["release"] == "request"
    # Published and read back through the schema unchanged.
    entry = read_entry(process_snapshot())
    assert not isinstance(entry, Unreadable)
    assert entry["aliases"][tx_alias]["pinned_by_reason"] == {"session advisory lock": 1}
    out = io.StringIO()
    call_command("poolstats", "--alias", tx_alias, stdout=out)
    assert "RELEASE" in out.getvalue() and "transaction (1 released)" in out.getvalue(), out.getvalue()
    out = io.StringIO()
    call_command("poolstats", "--json", stdout=out)
    document = json.loads(out.getvalue())
    assert document["aliases"][tx_alias]["release"] == "transaction"
    assert document["aliases"][other]["release"] == "request"
    list(rows)
    connections[tx_alias].close()


def test_the_dashboard_shows_the_mode_the_releases_and_why_a_checkout_is_held(tx_alias, make_alias):
    import re

    from django.contrib.auth.models import User
    from django.test import Client

    other = make_alias()
    count(other)
    count(tx_alias)
    with connections[tx_alias].cursor() as cursor:
        cursor.execute("LISTEN poolguard_dashboard")
    client = Client()
    client.force_login(User.objects.create_superuser("release-admin", password="x-not-used"))
    page = client.get("/admin/django_poolguard/pool/").content.decode()

    def card(alias: str) -> str:
        found = re.search(rf'<article class="pg-card[^"]*" data-alias="{alias}">(.*?)</article>', page, re.S)
        assert found, page
        return found.group(1)

    assert re.search(r'<dd class="pg-release">transaction &middot; 1 released</dd>', card(tx_alias))
    assert re.search(r'<dd class="pg-release">request</dd>', card(other))
    assert "held: LISTEN" in page
    connections[tx_alias].close()
    connections[other].close()
