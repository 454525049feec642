"""Settings for poolguard's own test suite: a real PostgreSQL found by django_poolguard.testing."""

from __future__ import annotations

import os

from django_poolguard.testing import database_settings

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.urls"
STATIC_URL = "/static/"  # the admin's and the dashboard's CSS/JS, served by the live server in browser tests
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_poolguard",
    "tests.testapp",
]

MIDDLEWARE = [
    "django_poolguard.middleware.PoolGuardMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
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

_connection = database_settings("postgres")
# Processes started by the tests (Celery workers, benchmarks) get the test database's name here.
if os.environ.get("POOLGUARD_DB_NAME"):
    _connection["NAME"] = os.environ["POOLGUARD_DB_NAME"]
# Parallel runs on one server (several checkouts, tox envs) set this to keep test databases apart.
TEST_DATABASE = os.environ.get("POOLGUARD_TEST_DB", "test_poolguard")

DATABASES = {
    "default": {
        "ENGINE": "django_poolguard.backends.postgresql",
        **_connection,
        "OPTIONS": {
            "pool": {"min_size": 1, "max_size": 8, "timeout": 5},
            "poolguard": {"workload": "web", "leak_threshold": 30},
        },
        "TEST": {"NAME": TEST_DATABASE},
    },
    # Same database, its own bounded pool for Celery tasks (the documented web/worker layout).
    "worker": {
        "ENGINE": "django_poolguard.backends.postgresql",
        **_connection,
        "OPTIONS": {
            "pool": {"min_size": 0, "max_size": 4, "timeout": 10},
            "poolguard": {
                "workload": "worker",
                "leak_threshold": float(os.environ.get("POOLGUARD_WORKER_LEAK_THRESHOLD", 600)),
            },
        },
        "TEST": {"MIRROR": "default"},
    },
}
DATABASE_ROUTERS = ["django_poolguard.routers.WorkloadRouter"]

POOLGUARD = {"WORKLOADS": {"web": "default", "worker": "worker"}}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_poolguard": {"handlers": ["console"], "level": "INFO"}},
}
