"""Views, a middleware and a URLconf for the middleware and health tests.

Each view takes a connection on the alias named by ``?alias=`` (a fresh test alias), the
way an application view would with the ORM.
"""

from __future__ import annotations

from asgiref.sync import markcoroutinefunction, sync_to_async
from django.db import connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import include, path

from django_poolguard.engine.context import current_context
from django_poolguard.engine.pool import get_pool
from tests.metrics_view import metrics_view


def _query(alias: str) -> dict[str, object]:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")
    checkout = get_pool(alias).ledger.checkout_of(id(connections[alias].connection))
    return {"context": current_context(), "ledger_context": checkout.context if checkout else None}


def query(request: HttpRequest) -> JsonResponse:
    return JsonResponse(_query(request.GET["alias"]))


async def async_query(request: HttpRequest) -> JsonResponse:
    alias = request.GET["alias"]
    return JsonResponse(await sync_to_async(_query)(alias))


def broken(request: HttpRequest) -> HttpResponse:
    raise ValueError("a bug that is not about the pool")


class DatabaseTouchingMiddleware:
    """Like a session or auth middleware: queries before the view when ``?early=<alias>``."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        alias = request.GET.get("early")
        if alias:
            with connections[alias].cursor() as cursor:
                cursor.execute("SELECT 1")
        return self.get_response(request)


class AsyncDatabaseTouchingMiddleware:
    """The same in an async stack: Django converts its exception to a 500 in a worker thread."""

    sync_capable = False
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        alias = request.GET.get("early")
        if alias:
            await sync_to_async(_query)(alias)
        return await self.get_response(request)


urlpatterns = [
    path("query/", query),
    path("async-query/", async_query),
    path("broken/", broken),
    path("poolguard/", include("django_poolguard.urls")),
    path("metrics", metrics_view),
]
