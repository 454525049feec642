"""Views and a URLconf for the priority tests: each answers the class its checkouts get, and
takes a connection on ``?alias=`` when given, the way an application view would."""

from __future__ import annotations

from django.db import connections
from django.http import HttpRequest, HttpResponse
from django.urls import include, path

from django_poolguard import current_priority, priority


def _answer(request: HttpRequest) -> HttpResponse:
    alias = request.GET.get("alias")
    if alias:
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT 1")
    return HttpResponse(current_priority(), content_type="text/plain")


def view(request: HttpRequest, **kwargs: object) -> HttpResponse:
    return _answer(request)


@priority("critical")
def decorated(request: HttpRequest) -> HttpResponse:
    return _answer(request)


@priority("low")
async def async_decorated(request: HttpRequest) -> HttpResponse:
    return HttpResponse(current_priority(), content_type="text/plain")


reports = (
    [path("export/", view, name="export"), path("daily/", view, name="daily")],
    "reports",
)

urlpatterns = [
    path("checkout/", view, name="checkout"),
    path("shop/cart/", view, name="cart"),
    path("api/pay/<int:order>/", view, name="pay"),
    path("reports/", include(reports)),
    path("decorated/", decorated, name="decorated"),
    path("async-decorated/", async_decorated, name="async-decorated"),
]
