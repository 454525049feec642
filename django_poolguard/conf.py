"""Settings: the global ``POOLGUARD`` dict and each alias's ``OPTIONS["poolguard"]``.

Both are merged over a defaults table, read lazily, and the global one is cached
until Django's ``setting_changed`` says otherwise, so ``override_settings`` works.
Nothing here reads settings at import time.
"""

from __future__ import annotations

import functools
import inspect
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed

from django_poolguard.rules import (
    E003,
    E005,
    E006,
    E008,
    E010,
    E015,
    E017,
    E018,
    PG_MAX_MILLISECONDS,
    Finding,
    FleetBudget,
    Fraction,
    Function,
    Mapping,
    OneOf,
    PgTimeout,
    Priorities,
    Reserve,
    Seconds,
    Setting,
    Switch,
    Text,
    Whole,
    WorkloadName,
    find,
    not_a_dict,
    shown,
    unknown_keys,
)

logger = logging.getLogger("django_poolguard")

#: The ``ENGINE`` of an alias poolguard guards.
ENGINE = "django_poolguard.backends.postgresql"


def is_guarded(settings_dict: dict[str, Any]) -> bool:
    """Whether an alias is served by poolguard's engine (with or without a pool)."""
    return settings_dict.get("ENGINE") == ENGINE


def is_postgresql(settings_dict: dict[str, Any]) -> bool:
    """Whether an alias connects to PostgreSQL, through poolguard's engine or another one;
    these share the server's connection budget."""
    return "postgresql" in str(settings_dict.get("ENGINE", ""))


def pool_options(settings_dict: dict[str, Any]) -> Any:
    """The alias's ``OPTIONS["pool"]`` as written: ``True``, a dict, or falsy without a pool."""
    return (settings_dict.get("OPTIONS") or {}).get("pool")


#: Every key of ``settings.POOLGUARD``: its default, what it accepts, and the fix for a bad value.
GLOBAL_SETTINGS: dict[str, Setting] = {
    "MONITOR_INTERVAL": Setting(1.0, Seconds()),
    "RECLAIM_DEAD_THREADS": Setting(True, Switch()),
    "CAPTURE_STACKS": Setting(True, Switch()),
    "STACK_DEPTH": Setting(20, Whole(1)),
    "PUBLISH": Setting(
        "database",
        OneOf(("database", "cache", None), E008),
        fix='Use "database", "cache" (a Django cache such as Redis) or None',
    ),
    "PUBLISH_CACHE": Setting("default", Text(E008), fix="Name one of your CACHES aliases (a shared cache)"),
    "PUBLISH_INTERVAL": Setting(5.0, Seconds()),
    "WORKLOADS": Setting(
        {"web": "default", "worker": "worker"},
        Mapping(E006, expects="a dict of workload name to alias"),
        fix='Use e.g. {"web": "default", "worker": "worker"}',
    ),
    "ALERT_UTILIZATION": Setting(0.8, Fraction(), fix="Use e.g. 0.8 to alert when 80 % of a pool is in use"),
    "ALERT_AFTER": Setting(120.0, Seconds()),
    "ALERT_REPEAT": Setting(300.0, Seconds()),
    "RETRY_AFTER": Setting(5, Seconds()),
    "DEPLOYMENT": Setting(
        {},
        Mapping(E010, expects="a dict of workload to its shape"),
        fix='Use e.g. {"web": {"instances": 24, "processes": 4}, "worker": {"instances": 4, "processes": 8}}, '
        "at maximum autoscale",
    ),
    "PRIORITIES": Setting(
        {},
        Priorities(),
        fix='Use e.g. {"critical": ["checkout", "/api/pay/*"], "low": ["reports:*", "/reports/*"]}',
    ),
    # Off by default: it costs about 6 % of a bare checkout's instructions (docs/benchmarks/checkout.md).
    "PROFILE": Setting(False, Switch()),
    "PROFILE_TOP": Setting(
        20, Whole(1), fix="Use e.g. 20: the labels shown per alias, the rest summed as 'other'"
    ),
    "PROFILE_IDLE_SHARE": Setting(
        0.2, Fraction(), fix="Use e.g. 0.2 to report labels whose database share of the hold is below 20 %"
    ),
    "PROFILE_IDLE_SECONDS": Setting(
        0.1, Seconds(), fix="Use e.g. 0.1: the mean idle time per checkout worth reporting"
    ),
    "PROFILE_N_PLUS_ONE": Setting(
        50, Whole(2), fix="Use e.g. 50 queries in one checkout to report an N+1 pattern"
    ),
    "RESERVED_CONNECTIONS": Setting(
        10, Whole(0), fix="Keep some connections (e.g. 10) free for admin, migrations and emergencies"
    ),
}

PG_TIMEOUT_FIX = f"Use between 0.001 and {PG_MAX_MILLISECONDS / 1000} seconds"

#: When a checkout goes back to the pool (``OPTIONS["poolguard"]["release"]``).
RELEASE_MODES = ("request", "transaction")

#: How an alias's timeouts reach its sessions (``OPTIONS["poolguard"]["timeouts_via"]``).
TIMEOUTS_VIA = ("startup", "set", "server")

#: Where the leases of a fleet budget live (``OPTIONS["poolguard"]["lease_store"]``).
LEASE_STORES = ("database", "cache")

#: Every key of ``OPTIONS["poolguard"]``; a default of ``None`` means "not set".
ALIAS_SETTINGS: dict[str, Setting] = {
    "workload": Setting(
        None,
        WorkloadName(optional=True),
        fix="Use a name such as 'web', 'worker' or 'analytics'",
        unset="or remove the key to use the WORKLOADS entry naming this alias",
    ),
    "leak_threshold": Setting(30.0, Seconds()),
    "hoard_threshold": Setting(10.0, Seconds()),
    "statement_timeout": Setting(
        None, PgTimeout(), fix=PG_TIMEOUT_FIX, unset="or remove the key for no timeout"
    ),
    "idle_in_transaction_timeout": Setting(
        None, PgTimeout(), fix=PG_TIMEOUT_FIX, unset="or remove the key for no timeout"
    ),
    "reserve": Setting(
        None,
        Reserve(),
        fix='Use e.g. {"critical": 2, "normal": 1}: the last 2 free connections only for critical work, '
        "1 more not for low work",
        unset="or remove the key: every checkout is equal",
    ),
    "timeouts_via": Setting(
        "startup",
        OneOf(TIMEOUTS_VIA, E015),
        fix='Use "startup" (default: in the connection\'s startup packet), "set" (by SET once per '
        'connection: PgBouncer in session mode) or "server" (set by the role or PgBouncer\'s '
        "connect_query; poolguard checks them: PgBouncer in transaction mode)",
    ),
    "release": Setting(
        "request",
        OneOf(RELEASE_MODES),
        fix='Use "request" (default: a connection is kept from the first query to the end of the request '
        'or task) or "transaction" (given back to the pool whenever idle between transactions)',
    ),
    "fleet_budget": Setting(
        None,
        FleetBudget(),
        fix='Use e.g. 120 (connections for this alias\'s workload across all processes) or "auto" '
        "(max_connections minus the reserved connections and the other workloads, as poolbudget computes it)",
        unset="or remove the key: each process's pool keeps its own max_size",
    ),
    "lease_store": Setting(
        "database",
        OneOf(LEASE_STORES, E018),
        fix='Use "database" (a lease table in the alias\'s database: run manage.py migrate django_poolguard) '
        'or "cache" (the Django cache named by lease_cache, e.g. Redis)',
    ),
    "lease_cache": Setting(
        "default",
        Text(E018),
        fix="Name one of your CACHES aliases (a cache every process shares, e.g. Redis)",
    ),
}


def _psycopg_default(default: Any) -> str:
    return f"or remove the key to use psycopg_pool's default, {shown(default)}"


#: psycopg_pool's arguments in ``OPTIONS["pool"]`` (those the engine does not set itself).
POOL_ARGUMENTS: dict[str, Setting] = {
    "min_size": Setting(4, Whole(0, E003), unset=_psycopg_default(4)),
    "max_size": Setting(
        None, Whole(1, E003, optional=True), unset="or remove the key: max_size then equals min_size"
    ),
    "timeout": Setting(
        30.0,
        Seconds(E003),
        fix="Use a short timeout (e.g. 5) so a request fails fast instead of queueing for 30 s",
        unset=_psycopg_default(30.0),
    ),
    "max_waiting": Setting(
        0, Whole(0, E003), unset="or remove the key for psycopg_pool's default, 0: no limit"
    ),
    "max_lifetime": Setting(3600.0, Seconds(E003), unset=_psycopg_default(3600.0)),
    "max_idle": Setting(600.0, Seconds(E003), unset=_psycopg_default(600.0)),
    "reconnect_timeout": Setting(300.0, Seconds(E003), unset=_psycopg_default(300.0)),
    "num_workers": Setting(3, Whole(1, E003), unset=_psycopg_default(3)),
    "name": Setting(None, Text(E003), unset="or remove the key: the pool is named after the alias"),
    "close_returns": Setting(False, Switch(E003), unset=_psycopg_default(False)),
    "check": Setting(None, Function(E003), unset="or remove the key: CONN_HEALTH_CHECKS decides"),
    "reset": Setting(None, Function(E003), unset=_psycopg_default(None)),
    "reconnect_failed": Setting(None, Function(E003), unset=_psycopg_default(None)),
}

#: ``POOLGUARD`` and ``OPTIONS["poolguard"]`` defaults, by key.
DEFAULTS: dict[str, Any] = {name: setting.default for name, setting in GLOBAL_SETTINGS.items()}
ALIAS_DEFAULTS: dict[str, Any] = {name: setting.default for name, setting in ALIAS_SETTINGS.items()}


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
        finding = find("POOLGUARD", name, value, GLOBAL_SETTINGS[name])
        if finding is not None:
            # A guard setting must not take the site down: the system check fails at startup,
            # and a process started without checks runs with the default, saying so once.
            logger.warning(
                "%s Using the default, %s, until it is fixed (system check %s).",
                finding.message,
                shown(GLOBAL_SETTINGS[name].default),
                finding.check_id,
            )
            value = GLOBAL_SETTINGS[name].default
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
    reserve: dict[str, int] | None = None  # connections kept back per priority class
    release: str = "request"
    fleet_budget: int | str | None = None  # connections across the fleet, "auto", or None (off)
    lease_store: str = "database"
    lease_cache: str = "default"

    @classmethod
    def from_settings_dict(cls, alias: str, settings_dict: dict[str, Any]) -> AliasConfig:
        """Parsed, or ``ImproperlyConfigured`` naming the bad value and the fix (the words of its
        system check): raised when the alias first connects, never deep in a checkout."""
        findings = alias_findings(alias, settings_dict)
        if findings:
            raise findings[0].error()
        raw = (settings_dict.get("OPTIONS") or {}).get("poolguard") or {}
        options = {**ALIAS_DEFAULTS, **raw}
        return cls(
            alias=alias,
            workload=options["workload"] or workload_for_alias(alias),
            leak_threshold=float(options["leak_threshold"]),
            hoard_threshold=float(options["hoard_threshold"]),
            statement_timeout=options["statement_timeout"],
            idle_in_transaction_timeout=options["idle_in_transaction_timeout"],
            timeouts_via=options["timeouts_via"],
            reserve=dict(options["reserve"]) if options["reserve"] else None,
            release=options["release"],
            fleet_budget=options["fleet_budget"],
            lease_store=options["lease_store"],
            lease_cache=options["lease_cache"],
        )


# --- Validation: shared by the system checks and the code above -----------------------------


def alias_findings(alias: str, settings_dict: dict[str, Any]) -> list[Finding]:
    """Every bad value in ``DATABASES[alias]["OPTIONS"]["poolguard"]``."""
    where = f"DATABASES[{alias!r}]['OPTIONS']['poolguard']"
    guard = (settings_dict.get("OPTIONS") or {}).get("poolguard")
    if guard is None or guard == {}:
        return []
    if not isinstance(guard, dict):
        return [not_a_dict(where, guard, E005, "{'workload': 'web', 'leak_threshold': 30}")]
    findings = unknown_keys(where, guard, ALIAS_SETTINGS, E005)
    for key, setting in ALIAS_SETTINGS.items():
        if key in guard:
            finding = find(where, key, guard[key], setting)
            if finding is not None:
                findings.append(finding)
    if not findings and guard.get("reserve"):
        findings.extend(_reserve_findings(where, guard["reserve"], settings_dict))
    if not findings and guard.get("fleet_budget") is not None:
        findings.extend(_budget_findings(where, guard, settings_dict))
    return findings


def _budget_findings(where: str, guard: dict[str, Any], settings_dict: dict[str, Any]) -> list[Finding]:
    """E018: a fleet budget on an alias without a pool, or leases in a cache that does not exist."""
    if not pool_options(settings_dict):
        return [
            Finding(
                E018,
                f"{where}['fleet_budget']",
                guard["fleet_budget"],
                "",
                "Add OPTIONS['pool'] (e.g. {'min_size': 2, 'max_size': 10}) or remove the fleet_budget.",
                text=f"{where}['fleet_budget'] is set but the alias has no pool to cap.",
            )
        ]
    if guard.get("lease_store") == "cache":
        cache_alias = guard.get("lease_cache", ALIAS_SETTINGS["lease_cache"].default)
        if cache_alias not in (getattr(settings, "CACHES", None) or {}):
            return [
                Finding(
                    E018,
                    f"{where}['lease_cache']",
                    cache_alias,
                    "",
                    ALIAS_SETTINGS["lease_cache"].hint,
                    text=f"{where}['lease_store'] is 'cache' but lease_cache names {shown(cache_alias)}, "
                    "which is not in CACHES.",
                )
            ]
    return []


def _reserve_findings(where: str, reserve: dict[str, int], settings_dict: dict[str, Any]) -> list[Finding]:
    """E017: a reserve that leaves nothing for the classes below it."""
    pool = (settings_dict.get("OPTIONS") or {}).get("pool")
    if not isinstance(pool, dict) and pool is not True:
        return [
            Finding(
                E017,
                f"{where}['reserve']",
                reserve,
                "",
                "Add OPTIONS['pool'] (e.g. {'min_size': 2, 'max_size': 10}) or remove the reserve.",
                text=f"{where}['reserve'] is set but the alias has no pool to reserve connections of.",
            )
        ]
    pool = pool if isinstance(pool, dict) else {}
    min_size = pool.get("min_size", POOL_ARGUMENTS["min_size"].default)
    max_size = pool.get("max_size") or min_size
    kept = sum(reserve.values())
    if isinstance(max_size, int) and kept >= max_size:
        return [
            Finding(
                E017,
                f"{where}['reserve']",
                reserve,
                "",
                f"Keep the reserve below max_size (e.g. {{'critical': {max(1, max_size // 5)}}}), or raise max_size.",
                text=f"{where}['reserve'] keeps {kept} connection(s) back but the pool has max_size={max_size}: "
                "low-priority work would never get one.",
            )
        ]
    return []


def pool_arguments() -> set[str]:
    """The ``ConnectionPool`` arguments ``OPTIONS["pool"]`` may set."""
    from psycopg_pool import ConnectionPool

    names = set(inspect.signature(ConnectionPool.__init__).parameters) - {"self", "args", "kwargs"}
    # The engine passes these itself; setting them in OPTIONS["pool"] would clash. ("check" is
    # allowed: it overrides CONN_HEALTH_CHECKS, as in Django >= 6.1.)
    return names - {"conninfo", "open", "configure", "connection_class"}


def pool_max_size(settings_dict: dict[str, Any]) -> int | None:
    """The alias's ``max_size`` as psycopg_pool will apply it; ``None`` without a pool."""
    pool = pool_options(settings_dict)
    if not pool:
        return None
    if pool is True:
        pool = {}
    max_size = pool.get("max_size")
    if max_size is None:  # psycopg_pool: max_size defaults to min_size
        max_size = pool.get("min_size", POOL_ARGUMENTS["min_size"].default)
    return int(max_size)


def pool_findings(alias: str, pool: Any) -> list[Finding]:
    """Every bad value in ``DATABASES[alias]["OPTIONS"]["pool"]`` (none when there is no pool)."""
    where = f"DATABASES[{alias!r}]['OPTIONS']['pool']"
    if pool is True or not pool:
        return []
    if not isinstance(pool, dict):
        return [
            Finding(
                E003,
                where,
                pool,
                "",
                "Use e.g. {'min_size': 2, 'max_size': 10, 'timeout': 5}.",
                text=f"{where} must be True or a dict of psycopg_pool.ConnectionPool arguments, "
                f"not {type(pool).__name__}.",
            )
        ]
    allowed = pool_arguments()
    findings = [
        Finding(
            E003,
            where,
            finding.value,
            "",
            finding.hint,
            text=f"{where} has {shown(finding.value)}, which psycopg_pool.ConnectionPool does not accept here.",
        )
        for finding in unknown_keys(where, pool, sorted(allowed), E003)
    ]
    for key, setting in POOL_ARGUMENTS.items():
        if key in pool and key in allowed:
            finding = find(where, key, pool[key], setting)
            if finding is not None:
                findings.append(finding)
    if findings:
        return findings
    min_size = pool.get("min_size", POOL_ARGUMENTS["min_size"].default)
    max_size = pool.get("max_size")
    if max_size is not None and max_size < min_size:
        findings.append(
            Finding(
                E003,
                where,
                pool,
                "",
                "Raise max_size to at least min_size, or lower min_size.",
                text=f"{where} has max_size={max_size} below min_size={min_size}.",
            )
        )
    elif max_size is None and min_size == 0:
        findings.append(
            Finding(
                E003,
                where,
                pool,
                "",
                "Set max_size >= 1: it defaults to min_size, and a pool of 0 connections serves no one.",
                text=f"{where} has min_size=0 and no max_size.",
            )
        )
    return findings


def global_findings(keys: Iterable[str] = GLOBAL_SETTINGS) -> list[Finding]:
    """Every bad value in ``settings.POOLGUARD`` among ``keys``, and its unknown keys.

    Only the values themselves: ``WORKLOADS``' aliases and ``DEPLOYMENT``'s entries are checked
    with the settings they refer to, in :mod:`django_poolguard.checks`.
    """
    user = getattr(settings, "POOLGUARD", None)
    if user is None:
        return []
    if not isinstance(user, dict):
        return [not_a_dict("POOLGUARD", user, E005, "POOLGUARD = {'MONITOR_INTERVAL': 1.0}")]
    findings = unknown_keys("POOLGUARD", user, GLOBAL_SETTINGS, E005)
    for key in keys:
        if key in user:
            finding = find("POOLGUARD", key, user[key], GLOBAL_SETTINGS[key])
            if finding is not None:
                findings.append(finding)
    return findings


def setting_as_written(name: str) -> Any:
    """``POOLGUARD[name]`` as written, else ``ImproperlyConfigured`` in its check's words: for
    planning (the budget), where falling back to the default would answer for another fleet."""
    user = guard_settings.user_settings
    value = user.get(name, DEFAULTS[name]) if isinstance(user, dict) else DEFAULTS[name]
    finding = find("POOLGUARD", name, value, GLOBAL_SETTINGS[name])
    if finding is not None:
        raise finding.error()
    return value


def workloads_opening(alias: str, label: str, workloads: Any) -> list[str]:
    """The workloads whose processes open ``alias``'s pool: those ``workloads`` (the
    ``WORKLOADS`` setting) sends to it, as the router does; else its own ``workload`` label."""
    if isinstance(workloads, dict):
        mapped = [str(workload) for workload, target in workloads.items() if target == alias]
        if mapped:
            return mapped
    return [label]


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
