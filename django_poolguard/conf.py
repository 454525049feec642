"""Settings: the global ``POOLGUARD`` dict and each alias's ``OPTIONS["poolguard"]``.

Both are merged over a defaults table, read lazily, and the global one is cached
until Django's ``setting_changed`` says otherwise, so ``override_settings`` works.
Nothing here reads settings at import time.
"""

from __future__ import annotations

import functools
import socket
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed

#: The ``ENGINE`` of an alias poolguard guards.
ENGINE = "django_poolguard.backends.postgresql"

#: Every key of ``settings.POOLGUARD`` with its default.
DEFAULTS: dict[str, Any] = {
    "MONITOR_INTERVAL": 1.0,
    "RECLAIM_DEAD_THREADS": True,
    "CAPTURE_STACKS": True,
    "STACK_DEPTH": 20,
    "PUBLISH": "database",
    "PUBLISH_CACHE": "default",
    "PUBLISH_INTERVAL": 5.0,
    "WORKLOADS": {"web": "default", "worker": "worker"},
    "ALERT_UTILIZATION": 0.8,
    "ALERT_AFTER": 120.0,
    "ALERT_REPEAT": 300.0,
    "RETRY_AFTER": 5,
    "DEPLOYMENT": {},
    "RESERVED_CONNECTIONS": 10,
}

#: Every key of ``OPTIONS["poolguard"]`` with its default; ``None`` means "not set".
ALIAS_DEFAULTS: dict[str, Any] = {
    "workload": None,  # defaults to the WORKLOADS entry naming this alias, else the alias
    "leak_threshold": 30.0,
    "hoard_threshold": 10.0,
    "statement_timeout": None,
    "idle_in_transaction_timeout": None,
    "timeouts_via": "startup",  # one of TIMEOUTS_VIA: see session_timeouts.py
}

#: How an alias's timeouts reach its sessions (``OPTIONS["poolguard"]["timeouts_via"]``).
TIMEOUTS_VIA = ("startup", "set", "server")


class GuardSettings:
    """Attribute access to ``POOLGUARD`` merged over ``DEFAULTS``, cached."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] | None = None

    @property
    def user_settings(self) -> dict[str, Any]:
        return getattr(settings, "POOLGUARD", None) or {}

    def __getattr__(self, name: str) -> Any:
        # Only called on a miss: the value is then stored on the instance, so the checkout
        # path reads a setting as a plain attribute.
        if name not in DEFAULTS:
            raise AttributeError(f"POOLGUARD has no setting {name!r}")
        if self._cache is None:
            user = self.user_settings
            self._cache = {**DEFAULTS, **(user if isinstance(user, dict) else {})}
        value = self._cache[name]
        setattr(self, name, value)
        return value

    def reload(self) -> None:
        for name in DEFAULTS:
            self.__dict__.pop(name, None)
        self._cache = None


guard_settings = GuardSettings()


def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting == "POOLGUARD":
        guard_settings.reload()


setting_changed.connect(_reload, dispatch_uid="django_poolguard.conf.reload")


@dataclass(frozen=True)
class AliasConfig:
    """The guard's view of one database alias, resolved once per pool."""

    alias: str
    workload: str
    leak_threshold: float
    hoard_threshold: float
    statement_timeout: float | None
    idle_in_transaction_timeout: float | None
    timeouts_via: str = "startup"

    @classmethod
    def from_settings_dict(cls, alias: str, settings_dict: dict[str, Any]) -> AliasConfig:
        raw = (settings_dict.get("OPTIONS") or {}).get("poolguard") or {}
        options = {**ALIAS_DEFAULTS, **{k: v for k, v in raw.items() if k in ALIAS_DEFAULTS}}
        workload = options["workload"] or workload_for_alias(alias)
        return cls(
            alias=alias,
            workload=workload,
            leak_threshold=float(options["leak_threshold"]),
            hoard_threshold=float(options["hoard_threshold"]),
            statement_timeout=options["statement_timeout"],
            idle_in_transaction_timeout=options["idle_in_transaction_timeout"],
            timeouts_via=options["timeouts_via"],
        )


def workload_for_alias(alias: str) -> str:
    """The workload whose ``WORKLOADS`` entry names ``alias``; the alias itself otherwise."""
    workloads = guard_settings.WORKLOADS
    if isinstance(workloads, dict):
        for workload, target in workloads.items():
            if target == alias:
                return str(workload)
    return alias


@functools.cache
def hostname() -> str:
    return socket.gethostname()
