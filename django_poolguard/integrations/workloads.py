"""Workloads: which kind of work is running now (``web``, ``worker``, ``analytics``…), hence which
alias its queries use.

``POOLGUARD["WORKLOADS"]`` maps each workload to a database alias; :class:`~django_poolguard.routers.
WorkloadRouter` sends reads and writes to the alias of the workload in effect. A ``ContextVar`` holds
it, so threads, asyncio tasks and greenlets each have their own. Celery tasks run in ``worker``
(set by :mod:`django_poolguard.celery`); anything else can switch with :class:`workload`.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any, TypeVar

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.db import DEFAULT_DB_ALIAS

from django_poolguard.conf import guard_settings
from django_poolguard.engine.context import ContextBlock, process_role

WEB, WORKER = "web", "worker"

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("poolguard_workload", default=None)

F = TypeVar("F", bound=Callable[..., Any])


def current_workload() -> str:
    """The workload in effect: the innermost :class:`workload` block, else the process's own
    (``worker`` in a Celery worker, ``web`` elsewhere)."""
    name = _current.get()
    if name is not None:
        return name
    return WORKER if process_role() == WORKER else WEB


def web_alias() -> str:
    """The primary alias: the one ``WORKLOADS["web"]`` names, ``default`` unless configured."""
    return alias_for(WEB) or DEFAULT_DB_ALIAS


def alias_for(name: str) -> str | None:
    """The alias ``WORKLOADS`` maps workload ``name`` to, or ``None`` when it is unmapped, not an
    alias name (check E006 reports it; the router must not crash Django's own checks) or not in
    ``DATABASES``."""
    workloads = guard_settings.WORKLOADS
    alias = workloads.get(name) if isinstance(workloads, dict) else None
    return alias if isinstance(alias, str) and alias in settings.DATABASES else None


# workload -> the alias it resolves to. The router asks on every query, and reading two settings
# costs microseconds; entries are added on first use and all dropped when POOLGUARD or DATABASES
# change (override_settings). Plain dict writes of the same value from several threads are harmless.
_resolved: dict[str, str] = {}


def current_alias() -> str:
    """The alias queries use now: pass it on where Django defaults to ``default``, e.g.
    ``transaction.atomic(using=current_alias())`` and ``transaction.on_commit(fn, using=current_alias())``.

    A workload without its own alias (a project with no ``worker`` database) uses the web alias.
    """
    name = _current.get()
    if name is None:
        name = WORKER if process_role() == WORKER else WEB
    alias = _resolved.get(name)
    if alias is None:
        alias = _resolved[name] = alias_for(name) or web_alias()
    return alias


def _forget_resolved(*, setting: str, **kwargs: Any) -> None:
    if setting in ("POOLGUARD", "DATABASES"):
        _resolved.clear()


setting_changed.connect(
    _forget_resolved, dispatch_uid="django_poolguard.integrations.workloads.forget_resolved"
)


class workload(ContextBlock):  # lower case: used like a function, @workload("analytics")
    """Run a block or a function in another workload, so the router sends its queries to that
    workload's alias::

        with workload("analytics"):
            Report.objects.aggregate(...)

        @app.task
        @workload("analytics")        # below @app.task: it wraps the task's function
        def nightly_report(): ...

    ``name`` must be a key of ``POOLGUARD["WORKLOADS"]`` whose alias is in ``DATABASES``
    (``web`` is always accepted); anything else raises ``ImproperlyConfigured`` on entry.
    Blocks nest; each thread, asyncio task and greenlet has its own workload.
    """

    _var = _current

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"workload() takes a workload name such as 'analytics', not {name!r}.")
        self.name = name

    def __enter__(self) -> workload:
        if self.name != WEB and alias_for(self.name) is None:
            workloads = guard_settings.WORKLOADS
            known = ", ".join(sorted(workloads)) if isinstance(workloads, dict) else "none"
            raise ImproperlyConfigured(
                f"workload({self.name!r}): POOLGUARD['WORKLOADS'] does not map {self.name!r} to an alias "
                f"in DATABASES (workloads: {known}). Add POOLGUARD['WORKLOADS'][{self.name!r}] = '<alias>' "
                "and that alias to DATABASES."
            )
        return super().__enter__()


def enter(name: str) -> contextvars.Token[str | None]:
    """Switch to workload ``name`` until :func:`leave`; for integrations driven by signals.

    Unlike :class:`workload`, no validation: Celery's wiring enters ``worker`` even in projects
    without a worker alias, where :func:`current_alias` falls back to the web alias.
    """
    return _current.set(name)


def leave(token: contextvars.Token[str | None]) -> None:
    _current.reset(token)


__all__ = ["alias_for", "current_alias", "current_workload", "web_alias", "workload"]
