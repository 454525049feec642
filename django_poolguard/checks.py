"""System checks: every misconfiguration fails at startup naming the setting and the fix.

Ids are listed in ``docs/checks.md``. E001/W001 (the fleet budget) query the database and
live with the budget code, tagged ``database``.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.core.checks import Error, Warning, register
from django.utils.module_loading import import_string

from .conf import ALIAS_DEFAULTS, DEFAULTS, ENGINE, TIMEOUTS_VIA

ROUTER = "django_poolguard.routers.WorkloadRouter"
PUBLISH_CHOICES = ("database", "cache", None)
POSITIVE_ALIAS_KEYS = (
    "leak_threshold",
    "hoard_threshold",
    "statement_timeout",
    "idle_in_transaction_timeout",
)
POSITIVE_GLOBAL_KEYS = (
    "MONITOR_INTERVAL",
    "PUBLISH_INTERVAL",
    "ALERT_AFTER",
    "ALERT_REPEAT",
    "RETRY_AFTER",
    "STACK_DEPTH",
)


def _guarded_aliases() -> Iterable[tuple[str, dict[str, Any]]]:
    for alias, settings_dict in settings.DATABASES.items():
        if settings_dict.get("ENGINE") == ENGINE:
            yield alias, settings_dict


def _unknown_keys(given: Any, known: Iterable[str]) -> list[tuple[str, str]]:
    """``(key, suggestion)`` for every key of ``given`` not in ``known``."""
    known = list(known)
    out = []
    for key in given if isinstance(given, dict) else ():
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            out.append((key, f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(known)}"))
    return out


def _is_positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _pool_arguments() -> set[str]:
    from psycopg_pool import ConnectionPool

    names = set(inspect.signature(ConnectionPool.__init__).parameters) - {"self", "args", "kwargs"}
    # Django passes these itself; setting them in OPTIONS["pool"] would clash. ("check" is
    # allowed: it overrides CONN_HEALTH_CHECKS, as in Django >= 6.1.)
    return names - {"conninfo", "open", "configure", "connection_class"}


@register("poolguard")
def check_aliases(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    errors: list[Any] = []
    allowed_pool_args = _pool_arguments()
    for alias, settings_dict in _guarded_aliases():
        where = f"DATABASES[{alias!r}]"
        options = settings_dict.get("OPTIONS") or {}
        pool = options.get("pool")
        if not pool:
            errors.append(
                Warning(
                    f"{where} uses the poolguard engine without OPTIONS['pool']: there is no pool to guard.",
                    hint="Add OPTIONS['pool'] = {'min_size': 2, 'max_size': 10, 'timeout': 5}, or use Django's own postgresql engine.",
                    id="django_poolguard.W002",
                )
            )
        else:
            if settings_dict.get("CONN_MAX_AGE", 0) != 0:
                errors.append(
                    Error(
                        f"{where} sets CONN_MAX_AGE={settings_dict.get('CONN_MAX_AGE')!r} together with OPTIONS['pool'].",
                        hint="Set CONN_MAX_AGE to 0: the pool already keeps connections open.",
                        id="django_poolguard.E002",
                    )
                )
            errors.extend(_check_pool_options(where, pool, allowed_pool_args))
        guard = options.get("poolguard") or {}
        if not isinstance(guard, dict):
            errors.append(
                Error(
                    f"{where}['OPTIONS']['poolguard'] must be a dict, not {type(guard).__name__}.",
                    hint="Use e.g. {'workload': 'web', 'leak_threshold': 30}.",
                    id="django_poolguard.E005",
                )
            )
            continue
        for key, suggestion in _unknown_keys(guard, ALIAS_DEFAULTS):
            errors.append(
                Error(
                    f"{where}['OPTIONS']['poolguard'] has an unknown key {key!r}.",
                    hint=f"Remove or rename it: {suggestion}",
                    id="django_poolguard.E005",
                )
            )
        timeouts_via = guard.get("timeouts_via", ALIAS_DEFAULTS["timeouts_via"])
        if timeouts_via not in TIMEOUTS_VIA:
            errors.append(
                Error(
                    f"{where}['OPTIONS']['poolguard']['timeouts_via'] is {timeouts_via!r}.",
                    hint='Use "startup" (default: in the connection\'s startup packet), "set" (by SET once per '
                    'connection: PgBouncer in session mode) or "server" (set by the role or PgBouncer\'s '
                    "connect_query; poolguard checks them: PgBouncer in transaction mode).",
                    id="django_poolguard.E011",
                )
            )
        for key in POSITIVE_ALIAS_KEYS:
            value = guard.get(key)
            if value is not None and not _is_positive_number(value):
                errors.append(
                    Error(
                        f"{where}['OPTIONS']['poolguard']['{key}'] is {value!r}; it must be a positive number of seconds.",
                        hint=f"Set a value > 0, or remove the key to use the default ({ALIAS_DEFAULTS[key]}).",
                        id="django_poolguard.E004",
                    )
                )
    return errors


def _check_pool_options(where: str, pool: Any, allowed: set[str]) -> list[Any]:
    if pool is True:
        return []
    if not isinstance(pool, dict):
        return [
            Error(
                f"{where}['OPTIONS']['pool'] must be True or a dict of psycopg_pool.ConnectionPool arguments, not {type(pool).__name__}.",
                hint="Use e.g. {'min_size': 2, 'max_size': 10, 'timeout': 5}.",
                id="django_poolguard.E003",
            )
        ]
    errors = []
    for key, suggestion in _unknown_keys(pool, sorted(allowed)):
        errors.append(
            Error(
                f"{where}['OPTIONS']['pool'] has {key!r}, which psycopg_pool.ConnectionPool does not accept here.",
                hint=f"Remove or rename it: {suggestion}",
                id="django_poolguard.E003",
            )
        )
    min_size, max_size = pool.get("min_size", 4), pool.get("max_size")
    for key in ("min_size", "max_size", "max_waiting"):
        value = pool.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            errors.append(
                Error(
                    f"{where}['OPTIONS']['pool']['{key}'] is {value!r}; it must be a whole number >= 0.",
                    hint=f"Set {key} to a non-negative integer.",
                    id="django_poolguard.E003",
                )
            )
            return errors
    if max_size is not None and max_size < min_size:
        errors.append(
            Error(
                f"{where}['OPTIONS']['pool'] has max_size={max_size} below min_size={min_size}.",
                hint="Raise max_size to at least min_size, or lower min_size.",
                id="django_poolguard.E003",
            )
        )
    timeout = pool.get("timeout")
    if timeout is not None and not _is_positive_number(timeout):
        errors.append(
            Error(
                f"{where}['OPTIONS']['pool']['timeout'] is {timeout!r}; it must be a positive number of seconds.",
                hint="Set a short timeout (e.g. 5) so a request fails fast instead of queueing for 30 s.",
                id="django_poolguard.E003",
            )
        )
    return errors


@register("poolguard")
def check_global_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    user = getattr(settings, "POOLGUARD", None)
    if user is None:
        user = {}
    if not isinstance(user, dict):
        return [
            Error(
                f"POOLGUARD must be a dict, not {type(user).__name__}.",
                hint="Use e.g. POOLGUARD = {'MONITOR_INTERVAL': 1.0}.",
                id="django_poolguard.E005",
            )
        ]
    errors: list[Any] = []
    for key, suggestion in _unknown_keys(user, DEFAULTS):
        errors.append(
            Error(
                f"POOLGUARD has an unknown key {key!r}.",
                hint=f"Remove or rename it: {suggestion}",
                id="django_poolguard.E005",
            )
        )
    for key in POSITIVE_GLOBAL_KEYS:
        if key in user and not _is_positive_number(user[key]):
            errors.append(
                Error(
                    f"POOLGUARD['{key}'] is {user[key]!r}; it must be a positive number.",
                    hint=f"Set a value > 0, or remove the key to use the default ({DEFAULTS[key]}).",
                    id="django_poolguard.E004",
                )
            )
    utilization = user.get("ALERT_UTILIZATION", DEFAULTS["ALERT_UTILIZATION"])
    if not _is_positive_number(utilization) or utilization > 1:
        errors.append(
            Error(
                f"POOLGUARD['ALERT_UTILIZATION'] is {utilization!r}; it must be a fraction in (0, 1].",
                hint="Use e.g. 0.8 to alert when 80 % of a pool is in use.",
                id="django_poolguard.E004",
            )
        )
    reserved = user.get("RESERVED_CONNECTIONS", DEFAULTS["RESERVED_CONNECTIONS"])
    if not isinstance(reserved, int) or isinstance(reserved, bool) or reserved < 0:
        errors.append(
            Error(
                f"POOLGUARD['RESERVED_CONNECTIONS'] is {reserved!r}; it must be a whole number >= 0.",
                hint="Keep some connections (e.g. 10) free for admin, migrations and emergencies.",
                id="django_poolguard.E004",
            )
        )
    publish = user.get("PUBLISH", DEFAULTS["PUBLISH"])
    if publish not in PUBLISH_CHOICES:
        errors.append(
            Error(
                f"POOLGUARD['PUBLISH'] is {publish!r}.",
                hint='Use "database" (default), "cache" (a Django cache such as Redis) or None.',
                id="django_poolguard.E008",
            )
        )
    elif publish == "cache":
        cache_alias = user.get("PUBLISH_CACHE", DEFAULTS["PUBLISH_CACHE"])
        if cache_alias not in getattr(settings, "CACHES", {}):
            errors.append(
                Error(
                    f"POOLGUARD['PUBLISH'] is 'cache' but POOLGUARD['PUBLISH_CACHE'] names {cache_alias!r}, which is not in CACHES.",
                    hint="Set PUBLISH_CACHE to one of your CACHES aliases (a shared cache such as Redis).",
                    id="django_poolguard.E008",
                )
            )
    errors.extend(_check_workloads(user))
    return errors


def _check_workloads(user: dict[str, Any]) -> list[Any]:
    workloads = user.get("WORKLOADS", DEFAULTS["WORKLOADS"])
    if not isinstance(workloads, dict):
        return [
            Error(
                f"POOLGUARD['WORKLOADS'] must be a dict of workload name to alias, not {type(workloads).__name__}.",
                hint='Use e.g. {"web": "default", "worker": "worker"}.',
                id="django_poolguard.E006",
            )
        ]
    errors = []
    explicit = "WORKLOADS" in user
    for workload, alias in workloads.items():
        if alias not in settings.DATABASES:
            # The default mapping names a "worker" alias that many projects do not have: fine.
            if explicit or workload != "worker":
                errors.append(
                    Error(
                        f"POOLGUARD['WORKLOADS'] maps workload {workload!r} to alias {alias!r}, which is not in DATABASES.",
                        hint=f"Add DATABASES[{alias!r}] or map {workload!r} to one of: {', '.join(settings.DATABASES)}.",
                        id="django_poolguard.E006",
                    )
                )
    worker_alias = workloads.get("worker")
    if worker_alias in settings.DATABASES and worker_alias != workloads.get("web", "default"):
        if not _router_installed():
            errors.append(
                Error(
                    f"DATABASES has a worker alias {worker_alias!r} but DATABASE_ROUTERS does not include {ROUTER}.",
                    hint=f"Add {ROUTER!r} to DATABASE_ROUTERS so tasks use the worker pool and requests the web pool.",
                    id="django_poolguard.E007",
                )
            )
    return errors


def _router_installed() -> bool:
    """True when DATABASE_ROUTERS holds WorkloadRouter or a subclass (as a path, class or instance)."""
    for router in getattr(settings, "DATABASE_ROUTERS", []):
        if isinstance(router, str):
            if router == ROUTER:
                return True
            try:
                router = import_string(router)
            except ImportError:
                continue
        cls = router if isinstance(router, type) else type(router)
        if any(f"{k.__module__}.{k.__qualname__}" == ROUTER for k in cls.__mro__):
            return True
    return False


DEPLOYMENT_KEYS = ("instances", "processes")


@register("poolguard")
def check_deployment(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """``POOLGUARD["DEPLOYMENT"]``: the fleet shape the budget (E001/W001) multiplies by."""
    from .conf import AliasConfig

    user = getattr(settings, "POOLGUARD", None)
    deployment = user.get("DEPLOYMENT", {}) if isinstance(user, dict) else {}
    example = '{"web": {"instances": 24, "processes": 4}, "worker": {"instances": 4, "processes": 8}}'
    if not isinstance(deployment, dict):
        return [
            Error(
                f"POOLGUARD['DEPLOYMENT'] must be a dict of workload to its shape, not {type(deployment).__name__}.",
                hint=f"Use e.g. {example}, at maximum autoscale.",
                id="django_poolguard.E010",
            )
        ]
    workloads = user.get("WORKLOADS", DEFAULTS["WORKLOADS"]) if isinstance(user, dict) else {}
    pooled = {
        AliasConfig.from_settings_dict(alias, settings_dict).workload
        for alias, settings_dict in _guarded_aliases()
        if (settings_dict.get("OPTIONS") or {}).get("pool")
    }
    known = sorted(pooled | set(workloads if isinstance(workloads, dict) else ()))
    errors: list[Any] = []
    for workload, suggestion in _unknown_keys(deployment, known):
        errors.append(
            Error(
                f"POOLGUARD['DEPLOYMENT'] names workload {workload!r}, which no pooled alias or WORKLOADS entry uses.",
                hint=f"Rename it: {suggestion}",
                id="django_poolguard.E010",
            )
        )
    for workload, shape in deployment.items():
        where = f"POOLGUARD['DEPLOYMENT'][{workload!r}]"
        if not isinstance(shape, dict):
            errors.append(
                Error(
                    f"{where} must be a dict, not {type(shape).__name__}.",
                    hint='Use e.g. {"instances": 24, "processes": 4}: pods (or hosts) at maximum autoscale, '
                    "and processes with a pool per pod (gunicorn workers, Celery children).",
                    id="django_poolguard.E010",
                )
            )
            continue
        for key, suggestion in _unknown_keys(shape, DEPLOYMENT_KEYS):
            errors.append(
                Error(
                    f"{where} has an unknown key {key!r}.",
                    hint=f"Remove or rename it: {suggestion}",
                    id="django_poolguard.E010",
                )
            )
        for key in DEPLOYMENT_KEYS:
            value = shape.get(key, 1)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                errors.append(
                    Error(
                        f"{where}[{key!r}] is {value!r}; it must be a whole number >= 1.",
                        hint=f"Set {key} to the count at maximum autoscale (omit it to mean 1).",
                        id="django_poolguard.E010",
                    )
                )
    if deployment:
        for workload in sorted(pooled - set(deployment)):
            errors.append(
                Warning(
                    f"POOLGUARD['DEPLOYMENT'] does not declare workload {workload!r}, which has a pool; "
                    "the connection budget counts it as 1 instance x 1 process.",
                    hint=f'Add DEPLOYMENT[{workload!r}] = {{"instances": N, "processes": P}} at maximum autoscale.',
                    id="django_poolguard.W010",
                )
            )
    return errors
