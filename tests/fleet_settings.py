"""Settings for the fleet tests' child processes and the commands they run.

The children are real processes of a "fleet" on the test database, so everything comes
from the environment the test sets: the database name, PUBLISH mode and interval, the
Redis cache, the pool size and DEPLOYMENT.
"""

from __future__ import annotations

import copy
import json
import os

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES as _BASE_DATABASES

_env = os.environ
_default = copy.deepcopy(_BASE_DATABASES["default"])
_default.pop("TEST", None)
_default["NAME"] = _env.get("POOLGUARD_FLEET_DB", _default["NAME"])
_default["OPTIONS"] = {
    "pool": {"min_size": 0, "max_size": int(_env.get("POOLGUARD_FLEET_MAX_SIZE", "4")), "timeout": 5},
    "poolguard": {"workload": "web"},
}
DATABASES = {"default": _default}
_workloads = {"web": "default"}
if _env.get("POOLGUARD_FLEET_WORKER", "1") == "1":
    DATABASES["worker"] = {
        **copy.deepcopy(_default),
        "OPTIONS": {
            "pool": {"min_size": 0, "max_size": 2, "timeout": 5},
            "poolguard": {"workload": "worker"},
        },
    }
    _workloads["worker"] = "worker"

if _env.get("POOLGUARD_FLEET_BUDGET"):
    # The fleet budget tests: every child's web pool follows its lease of one budget.
    _budget = _env["POOLGUARD_FLEET_BUDGET"]
    _default["OPTIONS"]["poolguard"].update(
        fleet_budget=_budget if _budget == "auto" else int(_budget),
        lease_store=_env.get("POOLGUARD_FLEET_LEASE_STORE", "database"),
        lease_cache="fleet",
    )
    _default["OPTIONS"]["pool"]["min_size"] = int(_env.get("POOLGUARD_FLEET_MIN_SIZE", "0"))

CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
if _env.get("POOLGUARD_FLEET_REDIS"):
    CACHES["fleet"] = {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": _env["POOLGUARD_FLEET_REDIS"],
        "KEY_PREFIX": _env.get("POOLGUARD_FLEET_PREFIX", "poolguard-tests"),
    }

POOLGUARD = {
    "WORKLOADS": _workloads,
    "PUBLISH": None
    if _env.get("POOLGUARD_FLEET_PUBLISH") == "None"
    else _env.get("POOLGUARD_FLEET_PUBLISH", "database"),
    "PUBLISH_CACHE": "fleet" if _env.get("POOLGUARD_FLEET_REDIS") else "default",
    "PUBLISH_INTERVAL": float(_env.get("POOLGUARD_FLEET_INTERVAL", "1.0")),
    "DEPLOYMENT": json.loads(_env.get("POOLGUARD_FLEET_DEPLOYMENT", "{}")),
}
