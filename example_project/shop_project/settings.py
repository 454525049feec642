"""Settings of the example shop: one PostgreSQL database reached through three guarded pools.

``web`` (``default``) serves requests with a small pool that fails fast; ``worker`` serves Celery
tasks; ``analytics`` serves the slow revenue report with a longer ``statement_timeout``. The
database is ``DATABASE_URL`` when set, else a local or embedded PostgreSQL found by
``django_poolguard.testing``.

``SHOP_POOL_MODE=native`` swaps poolguard out for Django's own pool (same database, one alias, the
same ``max_size``): ``manage.py incident`` uses it to show each incident without poolguard.
``SHOP_RELEASE=transaction`` gives the web alias's connections back between transactions
(``OPTIONS["poolguard"]["release"]``); the ``hoard-fixed`` incident compares both.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from django_poolguard.testing import database_url, parse_url

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("SHOP_VAR_DIR", BASE_DIR / "var"))

SECRET_KEY = os.environ.get("SHOP_SECRET_KEY", "example-shop-not-secret")
DEBUG = os.environ.get("SHOP_DEBUG") == "1"
ALLOWED_HOSTS = ["*"]
USE_TZ = True
# One clock everywhere: the admin, `manage.py poolstats` and the logs all show this zone (Django's
# own default is America/Chicago).
TIME_ZONE = os.environ.get("SHOP_TIME_ZONE", "UTC")
ROOT_URLCONF = "shop_project.urls"
WSGI_APPLICATION = "shop_project.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
STATIC_URL = "static/"

# The demo's process shape, which the connection budget below counts.
GUNICORN_WORKERS = 2
CELERY_WORKER_CONCURRENCY = 2  # <= the worker alias's max_size (3): checked at worker start

POOL_MODE = os.environ.get("SHOP_POOL_MODE", "guarded")
if POOL_MODE not in ("guarded", "native", "prioritized"):
    raise ValueError(f"SHOP_POOL_MODE is {POOL_MODE!r}; use 'guarded' (default), 'prioritized' or 'native'.")
GUARDED = POOL_MODE in ("guarded", "prioritized")
# "prioritized": guarded, plus priority classes: checkout and payments keep the last two web
# connections, the revenue report is shed first (see docs/priority.md).
PRIORITIZED = POOL_MODE == "prioritized"
RELEASE = os.environ.get("SHOP_RELEASE", "request")
if RELEASE not in ("request", "transaction"):
    raise ValueError(f"SHOP_RELEASE is {RELEASE!r}; use 'request' (default) or 'transaction'.")
# django-prometheus 2.5 pins Django < 6.1: without it /metrics is served by prometheus_client alone.
DJANGO_PROMETHEUS = importlib.util.find_spec("django_prometheus") is not None

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    *(["django_prometheus"] if DJANGO_PROMETHEUS else []),
    "django_poolguard",
    "shop",
]

MIDDLEWARE = [
    *(["django_poolguard.middleware.PoolGuardMiddleware"] if GUARDED else []),
    *(["django_prometheus.middleware.PrometheusBeforeMiddleware"] if DJANGO_PROMETHEUS else []),
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    *(["django_prometheus.middleware.PrometheusAfterMiddleware"] if DJANGO_PROMETHEUS else []),
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# --- The database: one PostgreSQL, three pools -------------------------------------------------

# The embedded PostgreSQL (when there is no other) keeps its data in the shop's var/, ignored by git.
os.environ.setdefault("POOLGUARD_PGDATA", str(VAR_DIR / "pgdata"))
# Whether the banner must tell a second terminal which database to watch.
DATABASE_URL_GIVEN = bool(os.environ.get("DATABASE_URL"))
_connection = parse_url(database_url("poolguard_shop"))
# `manage.py incident` gives each run its own database (SHOP_DATABASE_NAME), beside the demo's.
DATABASE_NAME = os.environ.get("SHOP_DATABASE_NAME") or _connection["NAME"]
_connection["NAME"] = DATABASE_NAME


def _alias(pool: dict, poolguard: dict, **extra: object) -> dict:
    return {
        "ENGINE": "django_poolguard.backends.postgresql",
        **_connection,
        "CONN_MAX_AGE": 0,
        "OPTIONS": {"pool": pool, "poolguard": poolguard},
        **extra,
    }


if GUARDED:
    DATABASES = {
        # Requests: small, fails fast (3 s), sheds beyond 8 waiting; a request holding a connection
        # for 5 s is reported; PostgreSQL cancels any web query after 2 s.
        "default": _alias(
            {"min_size": 1, "max_size": 6, "timeout": 3, "max_waiting": 8},
            {
                "workload": "web",
                "leak_threshold": 5,
                "hoard_threshold": 2,
                "statement_timeout": 2,
                "idle_in_transaction_timeout": 30,
                # The last 2 free connections only for critical work, 1 more not for low work.
                **({"reserve": {"critical": 2, "normal": 1}} if PRIORITIZED else {}),
                "release": RELEASE,
            },
        ),
        # Celery tasks: their own bounded pool, so a backfill can only drain this one.
        "worker": _alias(
            {"min_size": 0, "max_size": 3, "timeout": 30},
            {"workload": "worker", "leak_threshold": 120, "statement_timeout": 120},
            TEST={"MIRROR": "default"},
        ),
        # The revenue report: slow on purpose, so a longer statement_timeout, two connections at most;
        # a report holding its connection past 10 s is reported.
        "analytics": _alias(
            {"min_size": 0, "max_size": 2, "timeout": 3, "max_waiting": 2},
            {"workload": "analytics", "leak_threshold": 10, "statement_timeout": 15},
            TEST={"MIRROR": "default"},
        ),
    }
    DATABASE_ROUTERS = ["django_poolguard.routers.WorkloadRouter"]
else:
    # Django's own pool, as most projects run it: one alias for everything, the same max_size, and
    # a 10 s timeout (Django's default is 30 s; scaled down so the comparison runs in seconds).
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            **_connection,
            "CONN_MAX_AGE": 0,
            "OPTIONS": {"pool": {"min_size": 1, "max_size": 6, "timeout": 10}},
        }
    }

POOLGUARD = {
    # The pool-time profile (docs/profile.md): `manage.py incident profile` and the admin show it.
    "PROFILE": GUARDED,
    "WORKLOADS": {"web": "default", "worker": "worker", "analytics": "analytics"}
    if GUARDED
    # Without poolguard's pools every workload shares the one alias, as in most projects.
    else {"web": "default", "worker": "default", "analytics": "default"},
    "MONITOR_INTERVAL": 1.0,
    "PUBLISH_INTERVAL": 2.0,
    # The shape the shop may autoscale to; `manage.py poolbudget` checks it against max_connections.
    # The analytics alias lives in the web processes (the report is a web view), so it is counted
    # in every one of them.
    "DEPLOYMENT": {
        "web": {"instances": 2, "processes": GUNICORN_WORKERS},
        "worker": {"instances": 1, "processes": CELERY_WORKER_CONCURRENCY},
        "analytics": {"instances": 2, "processes": GUNICORN_WORKERS},
    }
    if GUARDED
    else {},
    "RESERVED_CONNECTIONS": 10,
}
if PRIORITIZED:
    # By URL name: buying and paying are what the shop lives on; the report can wait for a quiet hour.
    POOLGUARD["PRIORITIES"] = {"critical": ["checkout", "pay"], "low": ["revenue-report"]}

# --- Celery -----------------------------------------------------------------------------------

CELERY_BROKER_URL = os.environ.get("SHOP_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem"):
    _queue_dir = VAR_DIR / "broker"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_queue_dir),
        "data_folder_out": str(_queue_dir),
        "processed_folder": str(VAR_DIR / "broker-processed"),
        "control_folder": str(VAR_DIR / "broker-control"),  # else Kombu writes ./control
        "store_processed": False,
    }
CELERY_TASK_DEFAULT_QUEUE = "shop"
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# --- Logging: poolguard's reports are the point of the demo -------------------------------------

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "django_poolguard": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "shop": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}
