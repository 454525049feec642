"""The site bench_release.py serves under gunicorn: settings and URLconf in one module.

``POOLGUARD_BENCH_CONFIG`` picks the backend: ``native`` (Django's pool), ``request`` or
``transaction`` (poolguard's release modes). Every configuration has a pool of
``POOLGUARD_BENCH_POOL`` connections, a 5 s checkout timeout, and the same view.
"""

from __future__ import annotations

import os
import urllib.request

from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.urls import path

from django_poolguard.testing import database_settings

CONFIG = os.environ.get("POOLGUARD_BENCH_CONFIG", "transaction")
POOL = int(os.environ.get("POOLGUARD_BENCH_POOL", "6"))
EXTERNAL = os.environ.get("POOLGUARD_BENCH_EXTERNAL", "http://127.0.0.1:9/")

SECRET_KEY = "bench"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = __name__
USE_TZ = True
LOGGING_CONFIG = None
_options: dict[str, object] = {"pool": {"min_size": POOL, "max_size": POOL, "timeout": 5}}
if CONFIG == "native":
    ENGINE = "django.db.backends.postgresql"
    INSTALLED_APPS: list[str] = []
    MIDDLEWARE: list[str] = []
else:
    ENGINE = "django_poolguard.backends.postgresql"
    INSTALLED_APPS = ["django_poolguard"]
    MIDDLEWARE = ["django_poolguard.middleware.PoolGuardMiddleware"]  # 503 when the pool is exhausted
    _options["poolguard"] = {"release": CONFIG, "leak_threshold": 60, "hoard_threshold": 60}
DATABASES = {
    "default": {
        "ENGINE": ENGINE,
        **database_settings("postgres"),
        "NAME": os.environ["POOLGUARD_GUNICORN_DB"],
        "OPTIONS": _options,
    }
}
POOLGUARD = {"PUBLISH": None, "WORKLOADS": {"web": "default"}}


def checkout(request: HttpRequest) -> HttpResponse:
    """Read the cart, call the payment provider (1 s), write the order: no transaction spans the call."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM bench_release_orders WHERE cart = %s", [1])
        cursor.fetchone()
    with urllib.request.urlopen(EXTERNAL, timeout=10) as response:
        response.read()
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO bench_release_orders (cart) VALUES (%s)", [1])
    return HttpResponse(b"ok\n", content_type="text/plain")


def health(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"ok\n", content_type="text/plain")


urlpatterns = [path("checkout/", checkout), path("poolguard/health/", health)]
