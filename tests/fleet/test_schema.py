"""The versioned snapshot schema: every entry this release publishes carries ``"schema": 2``;
an entry of the release before versioning (no ``"schema"``) and one of this release, published
side by side into the real publish table and real caches, both show in ``poolstats`` and the
admin; a newer version is skipped and reported; history points round-trip through the one
encoder and decoder."""

from __future__ import annotations

import copy
import json
import os
import time
from typing import Any

import psycopg
import pytest
from django.contrib.auth.models import User
from django.test import Client
from hypothesis import given
from hypothesis import strategies as st

import django_poolguard
from django_poolguard.engine.side_connection import connection_params
from django_poolguard.fleet import collect, publish
from django_poolguard.fleet.schema import (
    HISTORY_FIELDS,
    MAX_NUMBER,
    SCHEMA_VERSION,
    HistoryPoint,
    Unreadable,
    decode_history,
    decode_point,
    encode_point,
    read_entry,
)
from tests.fleet.test_fleet_entries import (
    DASHBOARD,
    DATA,
    GOOD,
    Bad,
    _close_side_connections,
    assert_readers_skip_and_report,
    entry_for,
    fleet_cache,
    insert_row,
    own_alias,
    poolstats,
    poolstats_check,
    put_in_cache,
)

__all__ = ["_close_side_connections", "fleet_cache", "own_alias"]  # fixtures used by this module

OLD = ("old-release", 1111)  # a process of the release before versioning
NEW = ("new-release", 2222)  # a process of this release

#: Captured from the release before versioning: ``publish.current_snapshot()`` of a process
#: holding one connection, plus the ``published_at`` its cache store added. No ``"schema"``.
V1_ENTRY: dict[str, Any] = {
    "host": "vm",
    "pid": 12971,
    "role": "web",
    "updated_at": "2026-11-28T18:04:16.544511+00:00",
    "aliases": {
        "default": {
            "workload": "web",
            "min": 1,
            "max": 8,
            "size": 2,
            "in_use": 1,
            "idle": 0,
            "waiting": 0,
            "utilization": 0.125,
            "status": "healthy",
            "acquire_ms": {"p50": 8.927, "p95": 8.927, "p99": 8.927},
            "held_ms": {"p50": 0.0, "p95": 0.0, "p99": 0.0},
            "acquired_total": 1,
            "timeouts_total": 0,
            "rejected_total": 0,
            "shed_total": 0,
            "leaks_active": 0,
            "leaks_total": 0,
            "hoards_total": 0,
            "reclaimed_total": 0,
            "reclaimed_by_reason": {},
            "connections_opened_total": 2,
            "connection_errors_total": 0,
            "leak_threshold": 30.0,
            "checkouts": [
                {
                    "thread": "MainThread",
                    "alive": True,
                    "held_s": 0.0,
                    "wait_ms": 8.927,
                    "context": "thread MainThread",
                    "in_transaction": False,
                    "stack": ["<string>:7 in <module>"],
                }
            ],
            "history": [[1795889056.5, 0, 0, 0, 8, 0.0], [1795889056.5, 1, 0, 0, 8, 8.927]],
        }
    },
    "publish_interval": 5.0,
    "published_at": 1795889056.5454004,
}


def v1_entry(alias: str) -> dict[str, Any]:
    """The captured entry as a live process of the old release would publish it now, on ``alias``."""
    entry = copy.deepcopy(V1_ENTRY)
    host, pid = OLD
    now = time.time()
    entry.update(host=host, pid=pid, published_at=now)
    pool = entry["aliases"].pop("default")
    pool["history"] = [[round(now - 10, 1), 0, 0, 0, 8, 0.0], [round(now - 5, 1), 1, 0, 0, 8, 8.927]]
    entry["aliases"][alias] = pool
    return entry


def v2_entry(alias: str) -> dict[str, Any]:
    entry = entry_for(alias, *NEW)
    assert entry["schema"] == SCHEMA_VERSION  # what this release publishes
    return entry


def superuser_client() -> Client:
    client = Client()
    client.force_login(User.objects.get_or_create(username="root", is_staff=True, is_superuser=True)[0])
    return client


def assert_both_releases_shown(alias: str) -> None:
    """poolstats (--json, the table, --check) and the admin show the old and the new process."""
    data = json.loads(poolstats("--json"))
    assert data["unreadable"] == [] and not data["errors"], data
    shown = {(p["host"], p["pid"]): p for p in data["processes"]}
    assert {OLD, NEW, (publish.hostname(), os.getpid())} <= set(shown), list(shown)
    # Every process is printed in this release's shape, the old one upgraded.
    assert {p["schema"] for p in data["processes"]} == {SCHEMA_VERSION}
    old = shown[OLD]["aliases"][alias]
    assert (old["in_use"], old["max"], old["acquire_ms"]["p95"]) == (1, 8, 8.927)
    assert old["checkouts"][0]["context"] == "thread MainThread"
    assert shown[NEW]["aliases"][alias]["in_use"] == 1
    # The totals count both releases and this process: one connection each; 8 + 3 + 3 at most.
    total = data["aliases"][alias]
    assert (total["processes"], total["in_use"], total["max"]) == (3, 3, 14), total

    table = poolstats()
    rows = {line.split()[0]: line.split() for line in table.splitlines() if line.startswith(("old-", "new-"))}
    assert rows["old-release"][1:4] == ["1111", "web", alias] and "1/0/0/8" in rows["old-release"], table
    assert rows["new-release"][1:4] == ["2222", "web", alias], table
    assert "unreadable" not in table

    code, line = poolstats_check()
    assert code == 0 and f"{alias}: 3/14 in use" in line and "(3 processes" in line, line

    client = superuser_client()
    page = client.get(DASHBOARD).content.decode()
    assert "<td>old-release</td><td>1111</td>" in page and "<td>new-release</td><td>2222</td>" in page
    assert "unreadable" not in page
    document = client.get(DATA)
    assert document.status_code == 200
    body = document.content.decode()
    assert "old-release" in body and "new-release" in body and "unreadable" not in body
    # The card's sparkline draws the fleet's history, the old process's points included.
    fleet = collect.collect(alias)
    history = [HistoryPoint(*p) for p in fleet["aliases"][alias]["history"]]
    assert any(p.max >= 8 for p in history), history


pytestmark = pytest.mark.django_db(transaction=True)


# --- side by side -------------------------------------------------------------------------------


def test_an_old_and_a_new_process_show_side_by_side_from_the_table(own_alias: str) -> None:
    insert_row(*OLD, json.dumps(v1_entry(own_alias)))
    insert_row(*NEW, json.dumps(v2_entry(own_alias)))
    assert_both_releases_shown(own_alias)


def test_an_old_and_a_new_process_show_side_by_side_from_a_cache(own_alias: str, fleet_cache: Any) -> None:
    put_in_cache(fleet_cache, *OLD, v1_entry(own_alias))
    put_in_cache(fleet_cache, *NEW, v2_entry(own_alias))
    assert_both_releases_shown(own_alias)


def test_an_old_entry_reads_as_the_same_entry_stamped_with_this_version() -> None:
    old = read_entry(V1_ENTRY)
    stamped = read_entry({**V1_ENTRY, "schema": SCHEMA_VERSION})
    assert not isinstance(old, Unreadable) and old == stamped
    assert old["schema"] == SCHEMA_VERSION
    # Every key the old release wrote is kept: nothing it published is lost in the upgrade.
    assert set(old) == set(V1_ENTRY) | {"schema"}
    assert set(old["aliases"]["default"]) >= set(V1_ENTRY["aliases"]["default"])
    # Keys added since read as their defaults: an old process ran as Django does.
    added = set(old["aliases"]["default"]) - set(V1_ENTRY["aliases"]["default"])
    assert {key: old["aliases"]["default"][key] for key in added} == {  # type: ignore[literal-required]
        "release": "request",
        "released_total": 0,
        "pinned_by_reason": {},
    }


# --- a newer version ------------------------------------------------------------------------


NEWER = Bad(
    "schema 3",
    lambda entry, alias: {**entry, "schema": SCHEMA_VERSION + 1},
    f"schema {SCHEMA_VERSION + 1} is newer than this release reads ({SCHEMA_VERSION}): upgrade poolguard",
)
NOT_A_VERSION = [
    Bad(f"schema {value!r}", lambda entry, alias, value=value: {**entry, "schema": value}, reason)
    for value, reason in (
        ("2", 'schema: expected a whole number from 1 to 2**53, got "2"'),
        (0, "schema: expected a whole number from 1 to 2**53, got 0"),
        (2.0, "schema: expected a whole number from 1 to 2**53, got 2.0"),
        (True, "schema: expected a whole number from 1 to 2**53, got true"),
        (None, "schema: expected a whole number from 1 to 2**53, got null"),
    )
]


@pytest.mark.parametrize("bad", [NEWER, *NOT_A_VERSION], ids=lambda bad: bad.name)
def test_a_newer_or_bad_version_is_skipped_and_reported_from_the_table(own_alias: str, bad: Bad) -> None:
    insert_row(*GOOD, json.dumps(entry_for(own_alias, *GOOD)))
    insert_row("bad-host", 6666, json.dumps(bad.spoil(entry_for(own_alias, "bad-host", 6666), own_alias)))
    assert_readers_skip_and_report(bad, own_alias)


def test_a_newer_version_is_skipped_and_reported_from_a_cache(own_alias: str, fleet_cache: Any) -> None:
    put_in_cache(fleet_cache, *GOOD, entry_for(own_alias, *GOOD))
    put_in_cache(
        fleet_cache, "bad-host", 6666, NEWER.spoil(entry_for(own_alias, "bad-host", 6666), own_alias)
    )
    assert_readers_skip_and_report(NEWER, own_alias)


def test_a_newer_version_is_reported_as_newer_whatever_else_it_changed() -> None:
    """A newer release may rename keys: the reason is the version, not the first key it misses."""
    entry = {"schema": SCHEMA_VERSION + 1, "host": "web-9", "pid": 99, "processes_by_alias": {}}
    result = read_entry(entry)
    assert isinstance(result, Unreadable)
    assert (result.host, result.pid) == ("web-9", 99)
    assert result.reason.startswith(f"schema {SCHEMA_VERSION + 1} is newer"), result.reason


# --- what this release publishes ---------------------------------------------------------------


def test_every_entry_published_to_the_table_carries_its_version(own_alias: str) -> None:
    assert publish.publish_now()
    with psycopg.connect(**connection_params("default")) as connection:
        rows = connection.execute(
            "SELECT key, data->'schema' FROM django_poolguard_processsnapshot WHERE key = %s",
            [publish.process_key()],
        ).fetchall()
    assert rows == [(publish.process_key(), SCHEMA_VERSION)]
    assert django_poolguard.process_snapshot()["schema"] == SCHEMA_VERSION


def test_every_entry_published_to_a_cache_carries_its_version(own_alias: str, fleet_cache: Any) -> None:
    assert publish.publish_now()
    stored = fleet_cache.get(publish.CACHE_PREFIX + publish.process_key())
    assert stored["schema"] == SCHEMA_VERSION
    # Plain data only: another release must be able to unpickle it without this one's classes.
    assert json.loads(json.dumps(stored)) == stored


# --- history points ----------------------------------------------------------------------------


POINTS = st.builds(
    HistoryPoint,
    t=st.floats(0, MAX_NUMBER),
    in_use=st.integers(0, MAX_NUMBER),
    idle=st.integers(0, MAX_NUMBER),
    waiting=st.integers(0, MAX_NUMBER),
    max=st.integers(0, MAX_NUMBER),
    acquire_p95_ms=st.floats(0, MAX_NUMBER),
)


@given(POINTS)
def test_a_history_point_round_trips_through_json(point: HistoryPoint) -> None:
    encoded = encode_point(point)
    assert isinstance(encoded, list) and len(encoded) == len(HISTORY_FIELDS)
    assert decode_point(json.loads(json.dumps(encoded))) == point


@pytest.mark.parametrize(
    "raw",
    [
        [1.0, 1, 0, 0, 4],
        [1.0, 1, 0, 0, 4, 0.5, 7],
        {"t": 1.0},
        [1.0, 1.5, 0, 0, 4, 0.5],
        [1.0, True, 0, 0, 4, 0.5],
        [float("nan"), 1, 0, 0, 4, 0.5],
        [1.0, 1, 0, 0, 4, -0.5],
    ],
)
def test_a_point_that_is_not_one_decodes_to_nothing(raw: Any) -> None:
    assert decode_point(raw) is None
    assert decode_history([raw, [1.0, 1, 0, 0, 4, 0.5]]) == [HistoryPoint(1.0, 1, 0, 0, 4, 0.5)]


def test_recorded_history_round_trips_through_the_store(own_alias: str) -> None:
    assert publish.publish_now()
    [mine] = [
        p
        for p in publish.read_published().processes
        if (p["host"], p["pid"]) == (publish.hostname(), os.getpid())
    ]
    published = decode_history(mine["aliases"][own_alias]["history"])
    recorded = decode_history(publish.history.points(own_alias))
    assert published and published == recorded[: len(published)]
    assert (published[-1].in_use, published[-1].max) == (1, 3)
    assert collect.collect(own_alias)["history_fields"] == list(HistoryPoint._fields)
