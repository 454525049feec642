"""django_poolguard: bounded, observable, self-healing PostgreSQL connection pools for Django.

The public API is small; names are imported lazily so ``import django_poolguard`` never
touches settings or the database.
"""

from __future__ import annotations

from typing import Any

from django_poolguard.exceptions import PoolExhausted

__version__ = "0.1.0"

__all__ = [
    "PoolExhausted",
    "checkout_context",
    "current_alias",
    "current_priority",
    "current_workload",
    "hold_connection",
    "priority",
    "process_snapshot",
    "snapshot",
    "workload",
]

_LAZY = {
    "checkout_context": ("django_poolguard.engine.context", "checkout_context"),
    "hold_connection": ("django_poolguard.backends.postgresql.release", "hold_connection"),
    "snapshot": ("django_poolguard.fleet.snapshots", "snapshot"),
    "process_snapshot": ("django_poolguard.fleet.snapshots", "process_snapshot"),
    "workload": ("django_poolguard.integrations.workloads", "workload"),
    "current_alias": ("django_poolguard.integrations.workloads", "current_alias"),
    "current_workload": ("django_poolguard.integrations.workloads", "current_workload"),
    "priority": ("django_poolguard.engine.priority", "priority"),
    "current_priority": ("django_poolguard.engine.priority", "current_priority"),
}


def __getattr__(name: str) -> Any:
    try:
        module_name, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'django_poolguard' has no attribute {name!r}") from None
    from importlib import import_module

    return getattr(import_module(module_name), attribute)
