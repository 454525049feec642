"""System checks: every misconfiguration fails at startup naming the setting and the fix.

Ids are listed in ``docs/checks.md``. E001/W001 (the fleet budget) query the database and
live with the budget code, tagged ``database``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.core.checks import Error, Warning, register
from django.utils.module_loading import import_string

from django_poolguard.conf import (
    ALIAS_SETTINGS,
    DEFAULTS,
    GLOBAL_SETTINGS,
    alias_findings,
    global_findings,
    is_guarded,
    pool_findings,
    pool_options,
    workloads_opening,
)
from django_poolguard.rules import E010, Finding, find, shown, unknown_keys

ROUTER = "django_poolguard.routers.WorkloadRouter"
E014 = "django_poolguard.E014"


def _guarded_aliases() -> Iterable[tuple[str, dict[str, Any]]]:
    for alias, settings_dict in settings.DATABASES.items():
        if is_guarded(settings_dict):
            yield alias, settings_dict


def _message(finding: Finding) -> Error:
    return Error(finding.message, hint=finding.hint, id=finding.check_id)


def _user_settings() -> dict[str, Any]:
    user = getattr(settings, "POOLGUARD", None)
    return user if isinstance(user, dict) else {}


def _workloads_setting() -> Any:
    return _user_settings().get("WORKLOADS", DEFAULTS["WORKLOADS"])


def _workload_label(alias: str, settings_dict: dict[str, Any]) -> str:
    """The alias's ``workload`` option when it is a valid one (E013 reports the others), else the
    ``WORKLOADS`` entry naming the alias, else the alias: what the engine would use."""
    guard = (settings_dict.get("OPTIONS") or {}).get("poolguard")
    workload = guard.get("workload") if isinstance(guard, dict) else None
    if workload is not None and ALIAS_SETTINGS["workload"].rule.problem(workload) is None:
        return str(workload)
    workloads = _workloads_setting()
    return workloads_opening(alias, alias, workloads)[0]


@register("poolguard")
def check_aliases(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    errors: list[Any] = []
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
        elif settings_dict.get("CONN_MAX_AGE", 0) != 0:
            errors.append(
                Error(
                    f"{where} sets CONN_MAX_AGE={shown(settings_dict.get('CONN_MAX_AGE'))} together with OPTIONS['pool'].",
                    hint="Set CONN_MAX_AGE to 0: the pool already keeps connections open.",
                    id="django_poolguard.E002",
                )
            )
        errors.extend(_message(finding) for finding in pool_findings(alias, pool))
        errors.extend(_message(finding) for finding in alias_findings(alias, settings_dict))
        errors.extend(_check_workload_agrees(alias, settings_dict))
    return errors


def _check_workload_agrees(alias: str, settings_dict: dict[str, Any]) -> list[Any]:
    """E014: the alias says it serves one workload while ``WORKLOADS`` sends others to it.

    The router follows ``WORKLOADS``, so the pool lives in those workloads' processes; the
    label would put it under the wrong workload in ``application_name`` and in the budget.
    """
    guard = (settings_dict.get("OPTIONS") or {}).get("poolguard")
    label = guard.get("workload") if isinstance(guard, dict) else None
    workloads = _workloads_setting()
    if (
        label is None
        or ALIAS_SETTINGS["workload"].rule.problem(label) is not None
        or not isinstance(workloads, dict)
    ):
        return []  # E013 names a bad label
    opening = workloads_opening(alias, str(label), workloads)
    if label in opening:
        return []
    sent = " and ".join(repr(workload) for workload in opening)
    return [
        Error(
            f"DATABASES[{alias!r}]['OPTIONS']['poolguard']['workload'] is {shown(label)}, but "
            f"POOLGUARD['WORKLOADS'] sends workload {sent} to {alias!r}: its pool is opened by "
            f"{sent} processes, and the connection budget counts it there.",
            hint=f"Set workload to {opening[0]!r} (or remove the key), or map {shown(label)} to {alias!r} "
            "in POOLGUARD['WORKLOADS'] if those processes open it too.",
            id=E014,
        )
    ]


@register("poolguard")
def check_global_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    # DEPLOYMENT with its entries, in check_deployment.
    keys = [key for key in GLOBAL_SETTINGS if key != "DEPLOYMENT"]
    errors: list[Any] = [_message(finding) for finding in global_findings(keys)]
    user = _user_settings()
    if user.get("PUBLISH") == "cache":
        cache_alias = user.get("PUBLISH_CACHE", DEFAULTS["PUBLISH_CACHE"])
        if isinstance(cache_alias, str) and cache_alias not in getattr(settings, "CACHES", {}):
            errors.append(
                Error(
                    f"POOLGUARD['PUBLISH'] is 'cache' but POOLGUARD['PUBLISH_CACHE'] names {shown(cache_alias)}, which is not in CACHES.",
                    hint="Set PUBLISH_CACHE to one of your CACHES aliases (a shared cache such as Redis).",
                    id="django_poolguard.E008",
                )
            )
    errors.extend(_check_workloads(user))
    return errors


def _check_workloads(user: dict[str, Any]) -> list[Any]:
    workloads = user.get("WORKLOADS", DEFAULTS["WORKLOADS"])
    if not isinstance(workloads, dict):
        return []  # reported with the other values of POOLGUARD
    errors = []
    explicit = "WORKLOADS" in user
    name_rule = ALIAS_SETTINGS["workload"].rule
    for workload, alias in workloads.items():
        problem = name_rule.problem(workload)
        if problem is not None:
            errors.append(
                Error(
                    f"POOLGUARD['WORKLOADS'] has the workload {shown(workload)}; {problem.reason}.",
                    hint="Rename it: the workload is part of each session's application_name.",
                    id="django_poolguard.E006",
                )
            )
        if not isinstance(alias, str) or alias not in settings.DATABASES:
            # The default mapping names a "worker" alias that many projects do not have: fine.
            if explicit or workload != "worker":
                errors.append(
                    Error(
                        f"POOLGUARD['WORKLOADS'] maps workload {shown(workload)} to alias {shown(alias)}, which is not in DATABASES.",
                        hint=f"Add that alias to DATABASES or map {shown(workload)} to one of: {', '.join(settings.DATABASES)}.",
                        id="django_poolguard.E006",
                    )
                )
    worker_alias = workloads.get("worker")
    if (
        isinstance(worker_alias, str)
        and worker_alias in settings.DATABASES
        and worker_alias != workloads.get("web", "default")
    ):
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
    user = _user_settings()
    deployment = user.get("DEPLOYMENT", {})
    if not isinstance(deployment, dict):
        finding = find("POOLGUARD", "DEPLOYMENT", deployment, GLOBAL_SETTINGS["DEPLOYMENT"])
        return [_message(finding)] if finding is not None else []
    workloads = _workloads_setting()
    pooled = {
        workload
        for alias, settings_dict in _guarded_aliases()
        if pool_options(settings_dict)
        for workload in workloads_opening(alias, _workload_label(alias, settings_dict), workloads)
    }
    known = sorted(pooled | {str(w) for w in (workloads if isinstance(workloads, dict) else ())})
    errors: list[Any] = []
    for finding in unknown_keys("POOLGUARD['DEPLOYMENT']", deployment, known, E010):
        errors.append(
            Error(
                f"POOLGUARD['DEPLOYMENT'] names workload {shown(finding.value)}, which no pooled alias or WORKLOADS entry uses.",
                hint=finding.hint,
                id=E010,
            )
        )
    for workload, shape in deployment.items():
        where = f"POOLGUARD['DEPLOYMENT'][{shown(workload)}]"
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
        errors.extend(_message(finding) for finding in unknown_keys(where, shape, DEPLOYMENT_KEYS, E010))
        for key in DEPLOYMENT_KEYS:
            value = shape.get(key, 1)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                errors.append(
                    Error(
                        f"{where}[{key!r}] is {shown(value)}; it must be a whole number >= 1.",
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
