"""The shop bench_priority.py serves under gunicorn: settings, URLconf and views in one module.

``BENCH_PRIORITY_CONFIG`` picks the configuration: ``native`` (Django's own pool), ``poolguard``
(this backend and its middleware, no priorities) or ``priorities`` (the same plus a reserve and
``POOLGUARD["PRIORITIES"]``). Every one gets the same psycopg_pool arguments.
"""

from __future__ import annotations

import os

from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import include, path

from django_poolguard.testing import database_settings

CONFIG = os.environ.get("BENCH_PRIORITY_CONFIG", "priorities")
POOL_SIZE = int(os.environ.get("BENCH_PRIORITY_POOL", "10"))
# The database time of each class's request (s): a fast write, a page, a slow report.
SERVICE = {"critical": 0.01, "normal": 0.1, "low": 0.5}
RESERVE = {"critical": 2, "normal": 1}

DEBUG = False
SECRET_KEY = "bench"
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = __name__
USE_TZ = True
pool = {"min_size": POOL_SIZE, "max_size": POOL_SIZE, "timeout": 2, "max_waiting": 4}
if CONFIG == "native":
    ENGINE = "django.db.backends.postgresql"
    OPTIONS: dict[str, object] = {"pool": pool}
    MIDDLEWARE: list[str] = []
    INSTALLED_APPS: list[str] = []
else:
    ENGINE = "django_poolguard.backends.postgresql"
    OPTIONS = {"pool": pool, "poolguard": {"leak_threshold": 60}}
    if CONFIG == "priorities":
        OPTIONS["poolguard"] = {"leak_threshold": 60, "reserve": RESERVE}
    MIDDLEWARE = ["django_poolguard.middleware.PoolGuardMiddleware"]
    INSTALLED_APPS = ["django_poolguard"]
DATABASES = {"default": {"ENGINE": ENGINE, **database_settings("postgres"), "OPTIONS": OPTIONS}}
POOLGUARD = {"PUBLISH": None, "WORKLOADS": {"web": "default"}, "RETRY_AFTER": 1}
if CONFIG == "priorities":
    POOLGUARD["PRIORITIES"] = {"critical": ["checkout"], "low": ["reports:*"]}
LOGGING_CONFIG = None


def checkout(request: HttpRequest) -> HttpResponse:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("INSERT INTO bench_priority_orders DEFAULT VALUES")
        cursor.execute("SELECT pg_sleep(%s)", [SERVICE["critical"]])
    return HttpResponse(b"ok")


def browse(request: HttpRequest) -> HttpResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(%s)", [SERVICE["normal"]])
    return HttpResponse(b"ok")


def report(request: HttpRequest) -> HttpResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(%s)", [SERVICE["low"]])
    return HttpResponse(b"ok")


def health(request: HttpRequest) -> HttpResponse:  # GunicornServer waits for it
    return HttpResponse(b"ok")


def acquire_times(request: HttpRequest) -> JsonResponse:
    """The pool's own acquire-time percentiles per class (ms), to tell pool waits from server waits."""
    from django_poolguard.engine.ledger import percentiles
    from django_poolguard.engine.pool import get_pool
    from django_poolguard.engine.priority import PRIORITY_CLASSES

    pool = get_pool("default")
    if pool is None or pool.admission is None:
        return JsonResponse({})
    return JsonResponse(
        {
            name: percentiles(pool.admission.acquire_samples(rank))
            for rank, name in enumerate(PRIORITY_CLASSES)
        }
    )


urlpatterns = [
    path("checkout/", checkout, name="checkout"),
    path("browse/", browse, name="browse"),
    path("reports/", include(([path("export/", report, name="export")], "reports"))),
    path("poolguard/health/", health),
    path("bench/acquire/", acquire_times),
]
