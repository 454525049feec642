"""``DATABASE_ROUTERS = ["django_poolguard.routers.WorkloadRouter"]``: each workload on its own pool.

Aliases that point at one database (same NAME, HOST and PORT, or a ``TEST["MIRROR"]``) are one
database reached through different pools: web requests through the web alias, Celery tasks through
the worker alias. The router picks the alias of the current workload for every read and write,
lets objects from sibling aliases relate, and migrates the database once, through the primary alias.
"""

from __future__ import annotations

from typing import Any

from django.db import connections

from django_poolguard.integrations.workloads import current_alias, web_alias


def database_key(alias: str) -> tuple[str, str, str] | None:
    """What identifies the database an alias reaches: ``(NAME, HOST, PORT)``, following test mirrors."""
    try:
        settings_dict = connections.settings[alias]
    except Exception:  # ConnectionDoesNotExist: an alias this router does not know
        return None
    mirror = (settings_dict.get("TEST") or {}).get("MIRROR")
    if mirror and mirror != alias and mirror in connections.settings:
        settings_dict = connections.settings[mirror]
    return (
        str(settings_dict.get("NAME") or ""),
        str(settings_dict.get("HOST") or ""),
        str(settings_dict.get("PORT") or ""),
    )


def same_database(alias1: str, alias2: str) -> bool:
    if alias1 == alias2:
        return True
    key = database_key(alias1)
    return key is not None and key == database_key(alias2)


class WorkloadRouter:
    """Route every query to the alias of the current workload (see :func:`~django_poolguard.current_alias`).

    Put it last in ``DATABASE_ROUTERS``: a router before it that sends some apps to another
    database wins, and this one leaves objects that live in another database to Django.
    """

    def _route(self, model: Any, **hints: Any) -> str | None:
        alias = current_alias()
        instance = hints.get("instance")
        home = getattr(getattr(instance, "_state", None), "db", None)
        if home is not None and home != alias and not same_database(home, alias):
            return None  # the instance lives in another database: not ours to move
        return alias

    db_for_read = _route
    db_for_write = _route

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        """Objects loaded through sibling aliases of one database may relate."""
        db1, db2 = obj1._state.db, obj2._state.db
        if db1 is None or db2 is None:
            return None
        return True if same_database(db1, db2) else None

    def allow_migrate(
        self, db: str, app_label: str, model_name: str | None = None, **hints: Any
    ) -> bool | None:
        """Migrate each database once: through the primary (web) alias, never through its siblings.

        A database reached by several aliases none of which is the primary is migrated through the
        first of them in ``DATABASES``.
        """
        primary = web_alias()
        if db == primary:
            return None
        if same_database(db, primary):
            return False
        for alias in connections.settings:
            if alias == db:
                return None
            if same_database(alias, db):
                return False
        return None


__all__ = ["WorkloadRouter", "database_key", "same_database"]
