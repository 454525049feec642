"""PoolGuardMiddleware: requests label their checkouts, and an exhausted pool answers 503, never 500."""

from __future__ import annotations

import json
import logging
import time

import pytest
from asgiref.sync import async_to_sync
from django.db import connections
from django.http import HttpResponse
from django.test import AsyncClient, Client, override_settings

from django_poolguard import PoolExhausted, middleware
from django_poolguard.engine.pool import get_pool
from tests.waiting import queue_waiters

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.urls("tests.testapp.shed"),
]

GUARDED = ["django_poolguard.middleware.PoolGuardMiddleware"]


@pytest.fixture
def exhausted(make_alias, holders):
    """An alias whose only connection is held by another thread; checkouts time out in 0.3 s."""
    alias = make_alias(pool={"min_size": 0, "max_size": 1, "timeout": 0.3})
    holders(alias, name="report")
    return alias


@pytest.fixture(autouse=True)
def _fresh_log_limit(monkeypatch):
    monkeypatch.setattr(middleware, "_last_logged", {})
    monkeypatch.setattr(middleware, "_unlogged", {})


def test_request_context_is_method_and_path_without_query(make_alias):
    alias = make_alias()
    response = Client().get("/query/", {"alias": alias, "secret": "x" * 10})
    connections[alias].close()
    assert response.status_code == 200
    assert response.json() == {"context": "GET /query/", "ledger_context": "GET /query/"}


@override_settings(POOLGUARD={"RETRY_AFTER": 7})
def test_exhausted_view_answers_503_with_retry_after_in_text(exhausted, caplog):
    response = Client().get("/query/", {"alias": exhausted})

    assert response.status_code == 503
    assert response["Retry-After"] == "7"
    assert response["Content-Type"].startswith("text/plain")
    body = response.content.decode()
    assert f"connection pool '{exhausted}' exhausted" in body and "Retry in 7 s" in body
    assert "report" not in body and "conftest" not in body, "holders and code locations stay in the logs"
    assert get_pool(exhausted).ledger.shed_total == 1
    assert not [r for r in caplog.records if r.name == "django.request"], "a shed request is not an error"
    warning = [r for r in caplog.records if r.name == "django_poolguard" and r.module == "middleware"]
    assert len(warning) == 1 and warning[0].levelno == logging.WARNING
    assert f"Answered 503 to 1 request(s) on alias '{exhausted}'" in warning[0].getMessage()
    assert "held by thread report" in warning[0].getMessage()


def test_json_clients_get_json(exhausted):
    response = Client().get("/query/", {"alias": exhausted}, headers={"accept": "application/json"})

    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert response.json() == {
        "error": "pool_exhausted",
        "detail": f"The database is busy (connection pool '{exhausted}' exhausted). Retry in 5 s.",
        "alias": exhausted,
        "retry_after": 5,
    }


def test_browsers_get_text(exhausted):
    accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    response = Client().get("/query/", {"alias": exhausted}, headers={"accept": accept})
    assert response.status_code == 503 and response["Content-Type"].startswith("text/plain")


def test_many_sheds_log_one_warning(exhausted, caplog):
    client = Client()
    statuses = [client.get("/query/", {"alias": exhausted}).status_code for _ in range(3)]
    assert statuses == [503, 503, 503]
    assert get_pool(exhausted).ledger.shed_total == 3
    assert len([r for r in caplog.records if r.name == "django_poolguard" and r.module == "middleware"]) == 1


@override_settings(MIDDLEWARE=[*GUARDED, "tests.testapp.shed.DatabaseTouchingMiddleware"])
def test_exhaustion_in_a_middleware_below_is_a_503_not_a_500(exhausted, make_alias):
    other = make_alias()
    # raise_request_exception=False: see the response a real client gets, not the re-raised error.
    response = Client(raise_request_exception=False).get("/query/", {"alias": other, "early": exhausted})
    connections[other].close()

    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert get_pool(exhausted).ledger.shed_total == 1


@override_settings(MIDDLEWARE=[*GUARDED, "tests.testapp.shed.AsyncDatabaseTouchingMiddleware"])
def test_exhaustion_in_an_async_middleware_below_is_a_503(exhausted, make_alias):
    other = make_alias()
    client = AsyncClient(raise_request_exception=False)
    response = async_to_sync(client.get)("/async-query/", {"alias": other, "early": exhausted})
    connections[other].close()

    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert get_pool(exhausted).ledger.shed_total == 1


@override_settings(MIDDLEWARE=GUARDED)
def test_other_errors_stay_500():
    response = Client(raise_request_exception=False).get("/broken/")
    assert response.status_code == 500


@pytest.mark.timing
@override_settings(MIDDLEWARE=GUARDED)
def test_full_wait_queue_is_shed_at_once(make_alias, holders):
    alias = make_alias(pool={"min_size": 0, "max_size": 1, "timeout": 5, "max_waiting": 1})
    holders(alias, name="slow-report")
    [waiter] = queue_waiters(alias, 1, within=5)

    started = time.monotonic()
    response = Client().get("/query/", {"alias": alias})
    elapsed = time.monotonic() - started

    assert response.status_code == 503
    assert elapsed < 1.0, f"a full queue must be refused at once, not after the 5 s timeout ({elapsed:.2f} s)"
    assert get_pool(alias).ledger.rejected_total == 1 and get_pool(alias).ledger.shed_total == 1
    waiter.join(10)


@override_settings(MIDDLEWARE=GUARDED)
def test_async_view_is_shed_and_labelled(exhausted, make_alias):
    client = AsyncClient()
    response = async_to_sync(client.get)("/async-query/", {"alias": exhausted})
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert get_pool(exhausted).ledger.shed_total == 1

    free = make_alias()
    response = async_to_sync(client.get)("/async-query/", {"alias": free, "q": "1"})
    connections[free].close()
    assert response.status_code == 200
    assert json.loads(response.content) == {
        "context": "GET /async-query/",
        "ledger_context": "GET /async-query/",
    }


def test_middleware_is_sync_and_async_capable():
    sync_instance = middleware.PoolGuardMiddleware(lambda request: None)

    async def get_response(request):
        return None

    async_instance = middleware.PoolGuardMiddleware(get_response)
    from asgiref.sync import iscoroutinefunction

    assert not iscoroutinefunction(sync_instance)
    assert iscoroutinefunction(async_instance)


def test_exhaustion_wrapped_by_application_code_is_still_found():
    exhausted = PoolExhausted("pool 'x' exhausted", alias="x", waited=1.0, queue_full=False)
    try:
        try:
            raise exhausted
        except PoolExhausted as exc:
            raise RuntimeError("checkout failed") from exc
    except RuntimeError as wrapped:
        assert middleware.find_exhaustion(wrapped) is exhausted
    assert middleware.find_exhaustion(ValueError("unrelated")) is None


def test_long_paths_are_cut_in_the_label():
    from django.test import RequestFactory

    label = middleware.request_label(RequestFactory().post("/" + "a" * 500 + "?x=1"))
    assert label.startswith("POST /aaa") and len(label) == len("POST ") + middleware.CONTEXT_PATH_CHARS
    assert "?" not in label


@override_settings(POOLGUARD={"PROFILE": True, "PRIORITIES": {"low": ["/reports/*"]}})
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_each_request_gets_its_priority_class_and_profile_scope(is_async):
    """Both run in the same request, on the sync and the async path, and both end with it."""
    from django.test import RequestFactory

    from django_poolguard.engine.priority import current_priority
    from django_poolguard.engine.profile import current_scope

    seen = {}

    def look(request):
        scope = current_scope()
        seen.update(priority=current_priority(), scope=scope and scope.label)
        return HttpResponse("ok")

    async def alook(request):
        return look(request)

    request = RequestFactory().get("/reports/daily/")
    if is_async:
        async_to_sync(middleware.PoolGuardMiddleware(alook))(request)
    else:
        middleware.PoolGuardMiddleware(look)(request)
    assert seen == {"priority": "low", "scope": "GET (no route)"}
    assert current_priority() == "normal" and current_scope() is None
