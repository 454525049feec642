from __future__ import annotations

from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.urls import include, path

from tests.metrics_view import metrics_view


def hold(request: HttpRequest) -> HttpResponse:
    """A view that keeps its connection for the service time (``?s=``, default 0.2 s)."""
    seconds = float(request.GET.get("s", "0.2"))
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(%s)", [seconds])
    return HttpResponse("ok\n", content_type="text/plain")


urlpatterns = [
    path("hold/", hold),
    path("poolguard/", include("django_poolguard.urls")),
    path("metrics", metrics_view),
]
