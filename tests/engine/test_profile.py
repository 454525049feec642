"""The pool-time profile: real requests through the middleware against the real database,
ranked by pool-seconds, with the idle, N+1 and retry findings and bounded labels."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import pytest
from django.db import connections
from django.test import Client

from django_poolguard.engine.pool import get_pool
from django_poolguard.engine.profile import OTHER, Profile, sample_idle, sql_shape
from django_poolguard.runtime import get_runtime

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.urls("tests.testapp.profiled")]


@pytest.fixture(autouse=True)
def _profile_on(settings: Any) -> None:
    settings.POOLGUARD = {**settings.POOLGUARD, "PROFILE": True}  # off by default: its cost


def rows_by_label(alias: str) -> dict[str, Any]:
    pool = get_pool(alias)
    assert pool is not None
    return {row["label"]: row for row in pool.ledger.profile.rows()}


def test_requests_are_ranked_by_pool_seconds_under_their_url_pattern(make_alias):
    alias = make_alias()
    request(f"/reports/slow/?alias={alias}&seconds=0.4")
    for slug in ("a", "b", "c"):
        request(f"/pages/{slug}/?alias={alias}")
    rows = get_pool(alias).ledger.profile.rows()
    assert [row["label"] for row in rows] == ["GET /reports/slow/", "GET /pages/<slug:slug>/"]
    slow, fast = rows
    assert slow["checkouts"] == 1 and fast["checkouts"] == 3 and fast["queries"] == 3
    assert slow["held_s"] >= 0.4
    # The slow report spends its hold in the database: pg_sleep is a query running.
    assert slow["db_s"] >= 0.4 and slow["db_s"] / slow["held_s"] > 0.5
    assert "tests/testapp/profiled.py" in (slow["origin"] or "")


def test_an_external_call_inside_the_request_is_idle_hold_with_its_line(make_alias):
    alias = make_alias()
    sampled: list[int] = []

    def sample_while_waiting() -> None:
        pool = get_pool(alias)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            checkouts = pool.ledger.checkouts() if pool else []
            if (
                checkouts
                and checkouts[0].queries == 1
                and checkouts[0].query_started <= checkouts[0].last_query
            ):
                time.sleep(0.1)  # well inside the provider call
                sampled.append(sample_idle(pool.ledger.checkouts(), time.monotonic()))
                return
            time.sleep(0.01)
            pool = pool or get_pool(alias)

    sampler = threading.Thread(target=sample_while_waiting)
    sampler.start()
    request(f"/orders/17/pay/?alias={alias}&seconds=0.6")
    sampler.join()
    assert sampled == [1]
    row = rows_by_label(alias)["GET /orders/<int:order>/pay/"]
    assert row["queries"] == 2 and row["held_s"] >= 0.6
    assert row["db_s"] / row["held_s"] < 0.2
    # The place the connection waited: the view's line calling the provider, then the provider.
    line = _line_of("tests/testapp/profiled.py", "# EXTERNAL CALL")
    assert row["idle_site"] is not None
    assert row["idle_site"].startswith(f"tests/testapp/profiled.py:{line} in pay > ")
    assert "in payment_provider" in row["idle_site"]


def test_an_n_plus_one_loop_is_counted_with_its_statement_shape_and_line(make_alias, settings):
    settings.POOLGUARD = {**settings.POOLGUARD, "PROFILE_N_PLUS_ONE": 20}
    alias = make_alias()
    request(f"/catalogue/?alias={alias}&n=60")
    request(f"/catalogue/?alias={alias}&n=5")  # under the threshold
    row = rows_by_label(alias)["GET /catalogue/"]
    assert row["checkouts"] == 2 and row["queries_max"] == 61 and row["queries"] == 61 + 6
    assert row["n1_checkouts"] == 1 and row["n1_queries"] == 61
    assert row["n1_shape"] == "SELECT ?::int AS category WHERE ? IN (?, ...)"
    assert row["n1_count"] == 61 - 20 + 1  # counted from the threshold on
    line = _line_of("tests/testapp/profiled.py", "# N+1 LOOP")
    assert (
        row["n1_site"]
        == f"tests/testapp/profiled.py:{line} in listing > tests/testapp/profiled.py:{_line_of(PROFILED, 'cursor.execute(sql')} in _one"
    )


def test_a_checkout_after_pool_exhausted_is_a_retry(make_alias):
    alias = make_alias(pool={"min_size": 0, "max_size": 1, "timeout": 1.0})
    held = threading.Event()

    def hold() -> None:
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT 1")
        held.set()
        time.sleep(1.5)
        connections[alias].close()

    holder = threading.Thread(target=hold, name="holder-7")
    holder.start()
    held.wait(5)
    response = request(f"/retrying/?alias={alias}")
    holder.join()
    assert response.status_code == 200
    rows = rows_by_label(alias)
    assert rows["GET /retrying/"]["retries"] == 1
    assert rows["GET /retrying/"]["checkouts"] == 1
    assert rows["thread holder-N"]["retries"] == 0  # thread names lose their numbers
    assert get_pool(alias).ledger.timeouts_total == 1


def test_ten_thousand_raw_paths_of_one_pattern_are_one_label(make_alias):
    alias = make_alias()
    client = Client()
    for i in range(10_000):  # distinct raw paths, one pattern, each request its own checkout
        client.get(f"/pages/page-{i}/?alias={alias}")
        connections[alias].close()
    rows = rows_by_label(alias)
    assert list(rows) == ["GET /pages/<slug:slug>/"]
    assert rows["GET /pages/<slug:slug>/"]["checkouts"] == 10_000


def test_ten_thousand_patterns_keep_twice_profile_top_labels_and_lose_nothing(settings):
    from django_poolguard.engine.ledger import Checkout
    from django_poolguard.engine.profile import Scope

    settings.POOLGUARD = {**settings.POOLGUARD, "PROFILE_TOP": 10}
    profile = Profile()
    for i in range(10_000):  # as many URL patterns: what the middleware would label them
        checkout = Checkout(object(), 0.0, (), None)
        checkout.scope = Scope(f"GET /pattern-{i}/")
        profile.fold(checkout, checkout.started + 0.001 * (i % 7 + 1), 0.001 * (i % 7 + 1))
        assert len(profile) <= 20
    rows = profile.rows()
    assert len(rows) == 11 and rows[-1]["label"] == OTHER
    assert sum(r["checkouts"] for r in rows) == 10_000
    # Raw thread and task labels lose their numbers and ids: one label each.
    for n in range(500):
        checkout = Checkout(object(), 0.0, (), f"task shop.tasks.export[{n:08x}-id]")
        profile.fold(checkout, checkout.started + 0.5, 0.5)
        checkout = Checkout(object(), 0.0, (), None)
        checkout.thread = threading.Thread(name=f"Thread-{n} (worker)")
        profile.fold(checkout, checkout.started + 0.5, 0.5)
    labels = [row["label"] for row in profile.rows()]
    assert sorted(labels[:2]) == ["task shop.tasks.export", "thread Thread-N (worker)"]


def test_each_return_adds_its_figures_and_buckets_exactly():
    from django_poolguard.engine.ledger import Checkout
    from django_poolguard.engine.profile import QUERY_BOUNDS, WAIT_BOUNDS, Scope

    profile = Profile()
    n = 777
    queries = [i % 9 if i % 100 else 1500 for i in range(n)]  # 1,500: past every bound
    # Every bound, and the floats either side of it: a wait equal to a bound is in its bucket.
    edges = [
        w for bound in WAIT_BOUNDS for w in (bound, math.nextafter(bound, 0), math.nextafter(bound, 1e9))
    ]
    edges += [0.0, 1e-9, 100.0]
    waits = edges + [(i % 13) * 0.0002 for i in range(n - len(edges))]
    for i in range(n):
        checkout = Checkout(object(), waits[i], (), None, started=100.0)
        checkout.scope = Scope("GET /orders/")
        checkout.queries, checkout.db_time, checkout.tx_time = queries[i], 0.001, 0.002
        if i % 2:
            checkout.tx_started = 100.5  # still in its transaction when it came back
        profile.fold(checkout, 101.0, 1.0)
    [row] = profile.rows()
    assert row["checkouts"] == n and row["queries"] == sum(queries) and row["queries_max"] == 1500
    assert row["held_s"] == pytest.approx(n * 1.0) and row["db_s"] == pytest.approx(n * 0.001)
    assert row["tx_s"] == pytest.approx(n * 0.002 + (n // 2) * 0.5)
    expected_queries = [0] * (len(QUERY_BOUNDS) + 1)
    expected_waits = [0] * (len(WAIT_BOUNDS) + 1)
    for q, w in zip(queries, waits, strict=True):
        expected_queries[sum(1 for bound in QUERY_BOUNDS if bound < q)] += 1
        expected_waits[sum(1 for bound in WAIT_BOUNDS if bound < w)] += 1
    assert row["query_hist"] == expected_queries and row["wait_hist"] == expected_waits


def test_returns_folded_by_many_threads_while_others_read_are_all_counted():
    from django_poolguard.engine.ledger import Checkout

    profile = Profile()
    per_thread, threads = 600, 6
    reading = threading.Event()

    def fold_many() -> None:
        for _ in range(per_thread):
            checkout = Checkout(object(), 0.0, (), "command migrate")
            checkout.queries = 2
            profile.fold(checkout, checkout.started + 0.01, 0.01)

    def read() -> None:
        while not reading.is_set():
            profile.rows()
            profile.totals()

    reader = threading.Thread(target=read)
    reader.start()
    workers = [threading.Thread(target=fold_many) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    reading.set()
    reader.join()
    [row] = profile.rows()
    assert row["checkouts"] == per_thread * threads and row["queries"] == 2 * per_thread * threads
    assert profile.totals()[0] == pytest.approx(0.01 * per_thread * threads)


def test_time_in_transaction_is_counted_for_a_thread_label(make_alias):
    from django.db import transaction

    alias = make_alias()
    with transaction.atomic(using=alias):
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT 1")
        time.sleep(0.2)
    connections[alias].close()
    row = rows_by_label(alias)[f"thread {threading.current_thread().name}"]
    assert row["checkouts"] == 1 and row["queries"] == 1
    assert 0.2 <= row["tx_s"] <= row["held_s"]
    assert row["db_s"] < 0.1  # the sleep is not the database's


def test_with_profile_off_nothing_is_kept_or_published(make_alias, settings):
    import io

    from django.core.management import call_command
    from django.db.backends.utils import CursorWrapper

    from django_poolguard.fleet.snapshots import process_snapshot

    settings.POOLGUARD = {**settings.POOLGUARD, "PROFILE": False, "PUBLISH": None}
    alias = make_alias()
    with connections[alias].cursor() as cursor:
        assert type(cursor) is CursorWrapper  # Django's own, untimed
        cursor.execute("SELECT 1")
    connections[alias].close()
    assert get_pool(alias).ledger.profile.rows() == []
    assert "top" not in process_snapshot()["aliases"][alias]
    out = io.StringIO()
    call_command("poolstats", "--top", "--alias", alias, stdout=out)
    assert f"Top holders of {alias}: no profile published (POOLGUARD['PROFILE'] is off)." in out.getvalue()


def test_sql_shapes_hide_values():
    assert sql_shape("SELECT * FROM t WHERE a = 'secret' AND b IN (1, 2, 3) AND c = %s LIMIT 21") == (
        "SELECT * FROM t WHERE a = ? AND b IN (?, ...) AND c = ? LIMIT ?"
    )


# --- helpers ---------------------------------------------------------------------------------


def request(url: str) -> Any:
    """A request through the middleware; its connection returned at its end, as in production
    (Django's test client keeps connections open across requests)."""
    try:
        return Client().get(url)
    finally:
        for connection in connections.all(initialized_only=True):
            connection.close()


PROFILED = "tests/testapp/profiled.py"


def _line_of(path: str, marker: str) -> int:
    with open(path) as source:
        for number, text in enumerate(source, 1):
            if marker in text:
                return number
    raise AssertionError(marker)


# --- Published, summed over the fleet, shown ----------------------------------------------------


def _two_routes(alias: str) -> None:
    request(f"/reports/slow/?alias={alias}&seconds=0.3")
    request(f"/pages/a/?alias={alias}")


def test_the_snapshot_publishes_the_top_rows_and_the_reader_validates_them(make_alias):
    from django_poolguard.fleet.schema import Unreadable, read_entry
    from django_poolguard.fleet.snapshots import process_snapshot

    alias = make_alias()
    _two_routes(alias)
    entry = read_entry(process_snapshot())
    assert not isinstance(entry, Unreadable)
    top = entry["aliases"][alias]["top"]
    assert [row["label"] for row in top] == ["GET /reports/slow/", "GET /pages/<slug:slug>/"]
    raw = process_snapshot()
    raw["aliases"][alias]["top"][0]["query_hist"] = [1, 2]
    bad = read_entry(raw)
    assert isinstance(bad, Unreadable)
    assert f"aliases.{alias}.top[0].query_hist: expected a list of 26 counts" in bad.reason


def test_the_fleet_sums_each_label_over_processes(make_alias):
    from django_poolguard.fleet.collect import totals
    from django_poolguard.fleet.schema import read_entry
    from django_poolguard.fleet.snapshots import process_snapshot

    alias = make_alias()
    _two_routes(alias)
    one = read_entry(process_snapshot())
    other = read_entry({**process_snapshot(), "pid": 4242})
    total = totals([one, other], history=False)[alias]  # type: ignore[list-item]
    mine = {row["label"]: row for row in one["aliases"][alias]["top"]}  # type: ignore[index]
    slow = total["top"][0]
    assert slow["label"] == "GET /reports/slow/"
    assert slow["checkouts"] == 2 * mine["GET /reports/slow/"]["checkouts"]
    assert slow["held_s"] == pytest.approx(2 * mine["GET /reports/slow/"]["held_s"], abs=0.002)
    assert 0.0 < total["busy_ratio"] <= 1.0


def test_poolstats_top_shows_the_table_and_the_findings(make_alias, settings):
    import io
    import json

    from django.core.management import call_command

    settings.POOLGUARD = {**settings.POOLGUARD, "PUBLISH": None, "PROFILE_N_PLUS_ONE": 20}
    alias = make_alias()
    _two_routes(alias)
    request(f"/catalogue/?alias={alias}&n=30")
    request(f"/orders/5/pay/?alias={alias}&seconds=0.6")
    out = io.StringIO()
    call_command("poolstats", "--top", "--alias", alias, stdout=out)
    text = out.getvalue()
    assert f"Top holders of {alias}" in text
    table = text[text.index(f"Top holders of {alias}") :]
    lines = table.splitlines()
    assert lines[1].split()[:2] == ["LABEL", "CHECKOUTS"]
    assert lines[2].startswith("  GET /orders/<int:order>/pay/")  # the longest hold first
    assert "! holds connections idle: GET /orders/<int:order>/pay/ holds connections idle" in table
    assert "! N+1: GET /catalogue/ ran up to 31 queries in one checkout" in table
    out = io.StringIO()
    call_command("poolstats", "--json", "--alias", alias, stdout=out)
    data = json.loads(out.getvalue())["aliases"][alias]
    assert data["top"][0]["label"] == "GET /orders/<int:order>/pay/"
    assert {f["kind"] for f in data["findings"]} == {"holds connections idle", "N+1"}
    assert 0 < data["busy_ratio"] < 1


def test_the_dashboard_has_a_top_holders_table(make_alias, settings):
    import re

    from django.contrib.auth.models import User

    settings.POOLGUARD = {**settings.POOLGUARD, "PUBLISH": None}
    alias = make_alias()
    _two_routes(alias)
    client = Client()
    client.force_login(User.objects.create_superuser("boss", "boss@example.com", "pw"))
    page = client.get("/admin/django_poolguard/pool/").content.decode()
    table = re.search(rf'<table class="pg-table pg-top" data-alias="{alias}">(.*?)</table>', page, re.S)
    assert table, "a Top holders table per alias"
    labels = re.findall(r"<tr>\s*<td>([^<]+)</td>", table.group(1))
    assert labels == ["GET /reports/slow/", "GET /pages/&lt;slug:slug&gt;/"]


def test_metrics_carry_pool_and_database_seconds_by_bounded_label(make_alias, settings):
    from prometheus_client import REGISTRY

    settings.POOLGUARD = {**settings.POOLGUARD, "PROFILE_TOP": 2}
    alias = make_alias()
    _two_routes(alias)
    for slug in ("x", "y"):
        request(f"/pages/{slug}/?alias={alias}")
    request(f"/catalogue/?alias={alias}&n=3")
    request(f"/retrying/?alias={alias}")
    exporter = get_runtime().exporter
    assert exporter is not None, "prometheus_client is installed here"
    exporter.export()

    def value(name: str, label: str) -> float:
        return REGISTRY.get_sample_value(name, {"alias": alias, "label": label}) or 0.0

    profile = get_pool(alias).ledger.profile
    rows = {row["label"]: row for row in profile.rows(limit=100)}
    assert value("poolguard_pool_seconds_total", "GET /reports/slow/") == pytest.approx(
        rows["GET /reports/slow/"]["held_s"], abs=1e-5
    )
    assert value("poolguard_db_seconds_total", "GET /reports/slow/") >= 0.3
    series = {
        sample.labels["label"]
        for family in REGISTRY.collect()
        if family.name == "poolguard_pool_seconds"
        for sample in family.samples
        if sample.labels.get("alias") == alias and sample.name.endswith("_total")
    }
    assert series == {"GET /reports/slow/", "GET /pages/<slug:slug>/", "other"}  # 2 + other
    total = sum(row["held_s"] for row in rows.values())
    exported = sum(value("poolguard_pool_seconds_total", label) for label in series)
    assert exported == pytest.approx(total, abs=1e-5)
    held, db = profile.totals()
    assert REGISTRY.get_sample_value("poolguard_db_busy_ratio", {"alias": alias}) == pytest.approx(
        db / held, abs=1e-3
    )


def test_a_holder_inside_a_query_is_not_sampled_as_idle():
    from django_poolguard.engine.ledger import Checkout

    checkout = Checkout(object(), 0.0, (), None)  # held by this thread
    now = checkout.started + 1.0
    checkout.query_started = checkout.started + 0.5  # a query running since then, not ended
    assert sample_idle([checkout], now) == 0
    checkout.last_query = checkout.started + 0.6  # it ended: the holder is idle since
    assert sample_idle([checkout], now) == 1
    assert checkout.idle_site is not None and "test_profile.py" in checkout.idle_site
