"""Settings for the Celery benchmark's worker: the test settings, or with
``POOLGUARD_BENCH_ENGINE=native`` the same aliases on Django's own PostgreSQL engine and pool
(the baseline: Celery's Django fixup then closes the pool after every prefork task)."""

from __future__ import annotations

import os

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES

if os.environ.get("POOLGUARD_BENCH_ENGINE") == "native":
    for _settings in DATABASES.values():
        _settings["ENGINE"] = "django.db.backends.postgresql"
        _settings["OPTIONS"].pop("poolguard", None)
