"""GET /poolguard/health/: answered from memory, fast while the pool is exhausted, 503 only when critical."""

from __future__ import annotations

import time

import pytest
from django.db import connections
from django.test import Client

from django_poolguard import PoolExhausted
from django_poolguard.engine.pool import get_pool
from tests.waiting import queue_waiters

pytestmark = pytest.mark.django_db(transaction=True)


def test_unopened_pool_is_healthy_without_connecting(make_alias):
    alias = make_alias()
    response = Client().get("/poolguard/health/")

    assert response.status_code == 200
    assert response["Cache-Control"].startswith("max-age=0")
    assert response.json()["aliases"][alias] == {"status": "healthy", "open": False}
    assert get_pool(alias) is None, "the health check must not open a pool"


def test_idle_pool_is_healthy(make_alias):
    alias = make_alias(pool={"min_size": 0, "max_size": 4, "timeout": 2})
    connections[alias].ensure_connection()
    connections[alias].close()

    report = Client().get("/poolguard/health/").json()

    assert report["aliases"][alias] == {
        "status": "healthy",
        "open": True,
        "in_use": 0,
        "idle": 1,
        "waiting": 0,
        "max": 4,
        "utilization": 0.0,
    }


def test_full_pool_is_a_warning_and_still_200(make_alias, holders):
    alias = make_alias(pool={"min_size": 0, "max_size": 1, "timeout": 2})
    holders(alias)

    response = Client().get("/poolguard/health/")

    assert response.status_code == 200
    entry = response.json()["aliases"][alias]
    assert entry["status"] == "warning" and entry["in_use"] == 1 and entry["utilization"] == 1.0
    assert response.json()["status"] == "warning"


@pytest.mark.timing
def test_exhausted_pool_with_a_queue_is_critical_and_answered_at_once(make_alias, holders):
    alias = make_alias(pool={"min_size": 0, "max_size": 1, "timeout": 10})
    holder = holders(alias, name="report")
    waiters = queue_waiters(alias, 11, within=5)
    pool = get_pool(alias)
    acquired = pool.ledger.acquired_total

    started = time.monotonic()
    response = Client().get("/poolguard/health/")
    elapsed = time.monotonic() - started

    assert response.status_code == 503
    report = response.json()
    assert report["status"] == "critical"
    assert report["aliases"][alias]["waiting"] == 11 and report["aliases"][alias]["idle"] == 0
    assert elapsed < 1.0, f"health waited on the exhausted pool ({elapsed:.2f} s)"
    assert pool.ledger.acquired_total == acquired, "health borrowed a connection"
    body = response.content.decode()
    assert "report" not in body and "SELECT" not in body and "stack" not in body
    holder.release()
    for waiter in waiters:
        waiter.join(15)


def test_pool_that_cannot_connect_is_critical(make_alias):
    alias = make_alias(pool={"min_size": 0, "max_size": 1, "timeout": 0.5}, HOST="127.0.0.1", PORT="1")
    with pytest.raises(PoolExhausted):
        connections[alias].ensure_connection()

    response = Client().get("/poolguard/health/")

    assert response.status_code == 503, response.json()
    assert response.json()["aliases"][alias]["status"] == "critical"
    assert "127.0.0.1" not in response.content.decode(), "no connection details in the health report"


def test_only_get_and_head():
    assert Client().post("/poolguard/health/").status_code == 405
    assert Client().head("/poolguard/health/").status_code == 200
