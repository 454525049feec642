"""Views and a URLconf for the pool-time profile tests: a slow query, an external call made
while the connection is held, an N+1 loop, a fast view and a view that retries after an
exhausted pool. Each takes its connection on the alias named by ``?alias=``."""

from __future__ import annotations

import time

from django.contrib import admin
from django.db import connections
from django.http import HttpRequest, JsonResponse
from django.urls import path

from django_poolguard.exceptions import PoolExhausted


def _one(alias: str, sql: str = "SELECT 1", params: list[object] | None = None) -> None:
    with connections[alias].cursor() as cursor:
        cursor.execute(sql, params)


def slow_report(request: HttpRequest) -> JsonResponse:
    _one(request.GET["alias"], "SELECT pg_sleep(%s)", [float(request.GET.get("seconds", "0.3"))])
    return JsonResponse({"ok": True})


def payment_provider(seconds: float) -> None:
    """Stands for an HTTP call to a payment API."""
    time.sleep(seconds)


def pay(request: HttpRequest, order: int) -> JsonResponse:
    alias = request.GET["alias"]
    _one(alias, "SELECT %s::int", [order])
    payment_provider(float(request.GET.get("seconds", "0.4")))  # EXTERNAL CALL
    _one(alias, "SELECT %s::int + 1", [order])
    return JsonResponse({"ok": True})


def listing(request: HttpRequest) -> JsonResponse:
    alias = request.GET["alias"]
    _one(alias, "SELECT 1")
    for i in range(int(request.GET.get("n", "60"))):
        _one(alias, "SELECT %s::int AS category WHERE 1 IN (1, 2, 3)", [i])  # N+1 LOOP
    return JsonResponse({"ok": True})


def fast(request: HttpRequest, slug: str) -> JsonResponse:
    _one(request.GET["alias"])
    return JsonResponse({"ok": True})


def retrying(request: HttpRequest) -> JsonResponse:
    """Takes a connection after the pool refused one (a retry), as a view with a retry loop does."""
    alias = request.GET["alias"]
    try:
        _one(alias)
    except PoolExhausted:
        _one(alias)  # the retry: the holder gives its connection back meanwhile
    return JsonResponse({"ok": True})


urlpatterns = [
    path("reports/slow/", slow_report),
    path("orders/<int:order>/pay/", pay),
    path("catalogue/", listing),
    path("pages/<slug:slug>/", fast),
    path("retrying/", retrying),
    path("admin/", admin.site.urls),
]
