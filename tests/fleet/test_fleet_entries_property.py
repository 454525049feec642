"""Property: whatever a published entry holds, readers either show a valid process or skip and
report it, and never raise. Entries are arbitrary JSON-ish garbage and good snapshots of this
release with parts replaced by garbage (huge integers, NaN/inf, long strings, control
characters, nested containers); mixes of them go through the real stores, collect() and
poolstats/dashboard rendering."""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from django.core.cache import caches
from django.db import connections
from django.template.loader import render_to_string
from django.test import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django_poolguard.engine.side_connection import close_all, connection_params
from django_poolguard.fleet import collect, publish
from django_poolguard.fleet.schema import (
    HISTORY_FIELDS,
    MAX_NUMBER,
    MAX_PID,
    STATUSES,
    Unreadable,
    read_entry,
)
from django_poolguard.management.commands import poolstats
from django_poolguard.web import dashboard


def _deeply_nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([10**400, -(10**400), MAX_NUMBER, MAX_NUMBER + 1, 2**63, -1, 0]),
    st.builds(lambda: 10**5000),  # more digits than Python will print (built lazily: reprs fail)
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),  # any code point but surrogates: control characters included
    st.sampled_from([*STATUSES, "exhausted", "", "\x1b[2J\x1b[H", "a\nb", "abc", "x" * 5000]),
)
GARBAGE = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def template() -> dict[str, Any]:
    """A good entry in this release's shape, with every kind of part: two aliases, a checkout, history."""
    pool = {
        "workload": "web",
        "min": 0,
        "max": 4,
        "size": 2,
        "in_use": 1,
        "idle": 1,
        "waiting": 0,
        "utilization": 0.25,
        "status": "healthy",
        "acquire_ms": {"p50": 0.1, "p95": 0.5, "p99": 1.5},
        "held_ms": {"p50": 1.0, "p95": 5.0, "p99": 9.0},
        "acquired_total": 10,
        "timeouts_total": 0,
        "rejected_total": 0,
        "shed_total": 0,
        "leaks_active": 0,
        "leaks_total": 1,
        "hoards_total": 0,
        "reclaimed_total": 1,
        "reclaimed_by_reason": {"dead_thread": 1},
        "connections_opened_total": 2,
        "connection_errors_total": 0,
        "leak_threshold": 30.0,
        "checkouts": [
            {
                "thread": "web-1",
                "alive": True,
                "held_s": 2.5,
                "wait_ms": 0.2,
                "context": "GET /report",
                "in_transaction": False,
                "stack": ["shop/views.py:41 in report"],
            }
        ],
        "history": [[1000.0, 1, 1, 0, 4, 0.5], [1005.0, 2, 0, 0, 4, 0.7]],
    }
    return {
        "host": "web-1",
        "pid": 4242,
        "role": "web",
        "updated_at": "2026-01-01T00:00:00+00:00",
        "publish_interval": 5.0,
        "aliases": {"default": pool, "worker": json.loads(json.dumps(pool))},
    }


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, (*prefix, index))


@st.composite
def spoiled_entries(draw: Callable[..., Any]) -> Any:
    """A good entry with one to three parts replaced by garbage, deleted, or added."""
    entry: Any = template()
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(entry))
        path = draw(st.sampled_from(paths))
        garbage = draw(GARBAGE)
        if not path:
            entry = garbage
            continue
        parent = entry
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = garbage
        else:
            parent[path[-1]] = garbage
        if not isinstance(entry, (dict, list)):
            break
    return entry


ENTRIES = st.one_of(GARBAGE, spoiled_entries(), st.just(template()), st.just(_deeply_nested(100_000)))


def assert_valid(entry: Any) -> None:
    """What readers may rely on: JSON types only, finite bounded numbers, known statuses."""
    json.dumps(entry, allow_nan=False)

    def walk(value: Any) -> None:
        if isinstance(value, bool) or value is None:
            return
        if isinstance(value, int):
            assert 0 <= value <= MAX_NUMBER
        elif isinstance(value, float):
            assert math.isfinite(value) and 0.0 <= value <= MAX_NUMBER
        elif isinstance(value, str):
            assert len(value) <= 1000
        elif isinstance(value, dict):
            for key, child in value.items():
                assert isinstance(key, str)
                walk(child)
        else:
            assert isinstance(value, list)
            for child in value:
                walk(child)

    walk(entry)
    assert 0 <= entry["pid"] <= MAX_PID and entry["host"].isprintable() and entry["role"].isprintable()
    for alias, pool in entry["aliases"].items():
        assert alias.isprintable() and pool["status"] in STATUSES
        assert all(len(point) == 6 for point in pool.get("history", []))


def assert_reported(result: Unreadable) -> None:
    # The reason quotes a short escaped excerpt at most: printable, and short.
    assert result.reason.isprintable() and len(result.reason) < 300, result.reason
    assert result.host is None or (result.host.isprintable() and len(result.host) <= 300)
    assert result.pid is None or 0 <= result.pid <= MAX_PID


def fleet_document(processes: list[Any], unreadable: list[Unreadable]) -> dict[str, Any]:
    return {
        "generated_at": "2026-01-01T00:00:00+00:00",
        "publish": "database",
        "history_fields": list(HISTORY_FIELDS),
        "processes": processes,
        "aliases": collect.totals(processes),
        "database": {},
        "budget": {},
        "errors": [],
        "unreadable": [u.as_dict() for u in unreadable],
    }


def render_everything(data: dict[str, Any]) -> None:
    """poolstats' table, --check line and --json, and the dashboard's body."""
    poolstats.render(data)
    poolstats.check_line(collect.status(data), data)
    json.dumps(data, allow_nan=False)
    context = dashboard.build(data, with_sessions=False)
    render_to_string("django_poolguard/dashboard_body.html", {**context, "can_signal": False})


@settings(max_examples=200, deadline=None)
@given(ENTRIES)
def test_an_entry_is_valid_or_reported_never_raises(raw: Any) -> None:
    result = read_entry(raw, host="row-host", pid=7)
    if isinstance(result, Unreadable):
        assert_reported(result)
        render_everything(fleet_document([], [result]))
    else:
        assert_valid(result)
        render_everything(fleet_document([result], []))


def test_the_template_and_this_release_are_valid(make_alias: Callable[..., str]) -> None:
    """The generators start from good entries: the template, and what this process publishes."""
    assert_valid(read_entry(template()))
    alias = make_alias(pool={"min_size": 0, "max_size": 2, "timeout": 5})
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")
    own = read_entry(publish.current_snapshot())
    assert not isinstance(own, Unreadable), own
    assert_valid(own)
    assert own["aliases"][alias]["in_use"] == 1
    connections[alias].close()


# --- mixes through the real stores, collect() and every poolstats mode -----------------------


@pytest.fixture
def cache_publish(settings: Any) -> Iterator[Any]:
    guard = {**settings.POOLGUARD, "PUBLISH": "cache", "PUBLISH_CACHE": "fleet", "PUBLISH_INTERVAL": 600.0}
    backends = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "fleet": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "property"},
    }
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT 1")  # a pool, so the watchdog runs
    with override_settings(CACHES=backends, POOLGUARD=guard):
        cache = caches["fleet"]
        # The settings change woke the watchdog, which publishes once: let it finish first, so
        # its read-modify-write of the index cannot drop what an example puts there.
        deadline = time.monotonic() + 5
        while (
            publish.process_key() not in (cache.get(publish.CACHE_INDEX) or [])
            and time.monotonic() < deadline
        ):
            time.sleep(0.02)
        yield cache
        cache.clear()


def run_readers() -> dict[str, Any]:
    """collect() as poolstats and the dashboard call it, then every output they make from it."""
    data = collect.collect(local_fallback=False)
    render_everything({**data, "database": {}, "budget": {}})
    out = io.StringIO()
    poolstats.Command(stdout=out).show(None, {"leaks": False, "json": True, "watch": None})
    assert json.loads(out.getvalue())["unreadable"] == data["unreadable"]
    return data


def _mix_summary(entries: list[Any]) -> tuple[int, int]:
    results = [read_entry(e) for e in entries]
    return sum(not isinstance(r, Unreadable) for r in results), sum(
        isinstance(r, Unreadable) for r in results
    )


MIXES = st.lists(st.one_of(spoiled_entries(), GARBAGE, st.just(template())), min_size=1, max_size=4)


@pytest.mark.django_db(transaction=True)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(MIXES)
def test_a_mix_in_the_cache_shows_the_good_and_reports_the_rest(cache_publish: Any, mix: list[Any]) -> None:
    cache_publish.clear()
    for pid, entry in enumerate(mix, start=1):
        cache_publish.set(publish.CACHE_PREFIX + f"mix:{pid}", entry, timeout=60)
    cache_publish.set(publish.CACHE_INDEX, [f"mix:{pid}" for pid in range(1, len(mix) + 1)], timeout=60)
    data = run_readers()
    readable = [p for p in data["processes"] if p["host"] != publish.hostname()]
    assert (len(readable), len(data["unreadable"])) == _mix_summary(mix)
    assert not data["errors"], data["errors"]


JSON_MIXES = st.lists(
    st.one_of(spoiled_entries(), st.just(template())).filter(
        lambda e: _json_text(e) is not None and len(_json_text(e) or "") < 100_000 and not _short_lived(e)
    ),
    min_size=1,
    max_size=3,
)


def _short_lived(entry: Any) -> bool:
    """A row whose own interval is under a second may expire before it is read: not comparable."""
    interval = entry.get("publish_interval") if isinstance(entry, dict) else None
    return isinstance(interval, (int, float)) and not isinstance(interval, bool) and interval < 1.0


def _json_text(entry: Any) -> str | None:
    # What can be stored as jsonb at all: PostgreSQL refuses NaN, inf and \u0000.
    try:
        text = json.dumps(entry, allow_nan=False)
    except ValueError:
        return None
    return None if "\\u0000" in text else text


@pytest.mark.django_db(transaction=True)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(JSON_MIXES)
def test_a_mix_in_the_table_shows_the_good_and_reports_the_rest(mix: list[Any]) -> None:
    try:
        with psycopg.connect(**connection_params("default")) as connection:
            connection.execute("DELETE FROM django_poolguard_processsnapshot")
            for pid, entry in enumerate(mix, start=1):
                connection.execute(
                    "INSERT INTO django_poolguard_processsnapshot (key, host, pid, role, updated_at, data) "
                    "VALUES (%s, 'mix', %s, 'web', now(), %s::jsonb)",
                    [f"mix:{pid}", pid, _json_text(entry)],
                )
        data = run_readers()
        readable = [p for p in data["processes"] if p["host"] != publish.hostname()]
        assert (len(readable), len(data["unreadable"])) == _mix_summary(mix)
        assert not data["errors"], data["errors"]
    finally:
        close_all()
