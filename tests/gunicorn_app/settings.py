"""A small site served by a real gunicorn in tests/integrations/test_gunicorn.py: tests.settings plus a tight pool.

The test passes the test database's name in ``POOLGUARD_GUNICORN_DB`` (pytest-django created it).
"""

from __future__ import annotations

import os

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES

DATABASES["default"]["NAME"] = os.environ["POOLGUARD_GUNICORN_DB"]
DATABASES["default"]["OPTIONS"]["pool"] = {
    "min_size": 0,
    "max_size": int(os.environ.get("POOLGUARD_GUNICORN_MAX_SIZE", "4")),
    "max_waiting": int(os.environ.get("POOLGUARD_GUNICORN_MAX_WAITING", "4")),
    "timeout": float(os.environ.get("POOLGUARD_GUNICORN_TIMEOUT", "2")),
}
ROOT_URLCONF = "tests.gunicorn_app.urls"
MIDDLEWARE = [
    "django_poolguard.middleware.PoolGuardMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
POOLGUARD = {"WORKLOADS": {"web": "default"}, "MONITOR_INTERVAL": 0.2, "RETRY_AFTER": 3, "PUBLISH": None}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_poolguard": {"handlers": ["console"], "level": "WARNING"}},
}
