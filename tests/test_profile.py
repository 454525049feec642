"""The pool-time profile: real requests through the middleware against the real database,
ranked by pool-seconds, with the idle, N+1 and retry findings and bounded labels."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from django.db import connections
from django.test import Client

from django_poolguard.engine.pool import get_pool
from django_poolguard.engine.profile import OTHER, Profile, sample_idle, sql_shape

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.urls("tests.testapp.profiled")]


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
    assert slow["db_s"] >= 0.4 and slow["db_s"] / slow["held_s"] > 0.9
    assert "tests/testapp/profiled.py" in (slow["origin"] or "")


def test_an_external_call_inside_the_request_is_idle_hold_with_its_line(make_alias):
    alias = make_alias()
    sampled: list[int] = []

    def sample_while_waiting() -> None:
        pool = get_pool(alias)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            checkouts = pool.ledger.checkouts() if pool else []
            if checkouts and checkouts[0].queries == 1 and checkouts[0].query_started is None:
                time.sleep(0.1)  # well inside the provider call
                sampled.append(sample_idle([pool.ledger], time.monotonic()))
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
        == f"tests/testapp/profiled.py:{line} in listing > tests/testapp/profiled.py:18 in _one"
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


def test_labels_stay_bounded_for_many_raw_paths_and_many_patterns(make_alias, settings):
    settings.POOLGUARD = {**settings.POOLGUARD, "PROFILE_TOP": 10}
    alias = make_alias()
    for i in range(300):  # distinct raw paths, one pattern
        request(f"/pages/page-{i}/?alias={alias}")
    rows = rows_by_label(alias)
    assert list(rows) == ["GET /pages/<slug:slug>/"] and rows["GET /pages/<slug:slug>/"]["checkouts"] == 300
    profile = get_pool(alias).ledger.profile
    folded = _fold_many(profile, 10_000, lambda i: f"GET /pattern-{i}/")
    assert len(profile) <= 20
    rows_after = profile.rows()
    assert len(rows_after) == 11 and rows_after[-1]["label"] == OTHER
    assert sum(r["checkouts"] for r in rows_after) == folded + 300


def test_ten_thousand_raw_paths_of_one_pattern_are_one_label(make_alias):
    alias = make_alias()
    profile = get_pool(alias) or None
    profile = Profile()
    _fold_many(profile, 10_000, lambda i: "GET /pages/<slug:slug>/")
    assert len(profile) == 1


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


def _line_of(path: str, marker: str) -> int:
    with open(path) as source:
        for number, text in enumerate(source, 1):
            if marker in text:
                return number
    raise AssertionError(marker)


def _fold_many(profile: Profile, n: int, label: Any) -> int:
    from django_poolguard.engine.ledger import Checkout
    from django_poolguard.engine.profile import Scope

    for i in range(n):
        checkout = Checkout(object(), 0.0, (), None)
        checkout.scope = Scope(label(i))
        profile.fold(checkout, checkout.started + 0.001 * (i % 7 + 1))
    return n
