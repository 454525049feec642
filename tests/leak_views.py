"""A view that keeps its connection while it waits on something slow, for leak tests.

Used with ``ROOT_URLCONF = "tests.leak_views"``; the middleware labels checkouts with the
request the way poolguard's own middleware does.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from django.db import connections
from django.http import HttpRequest, HttpResponse
from django.urls import path

from django_poolguard.engine.context import checkout_context


def checkout_context_middleware(
    get_response: Callable[[HttpRequest], HttpResponse],
) -> Callable[..., HttpResponse]:
    def middleware(request: HttpRequest) -> HttpResponse:
        with checkout_context(f"{request.method} {request.path}"):
            return get_response(request)

    return middleware


def slow_report(request: HttpRequest, alias: str, note: str = "") -> HttpResponse:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")
    time.sleep(float(request.GET.get("hold", "1")))  # a slow call made while the connection stays checked out
    return HttpResponse("report ready")


urlpatterns = [
    path("report/<str:alias>/", slow_report),
    path("report/<str:alias>/<str:note>/", slow_report),  # any text in the path, for log-safety tests
]
