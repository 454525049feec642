"""Test-database creation: a ``TEST["MIRROR"]`` alias points at its primary's database
but keeps its own pool and guard options, so a worker alias stays a separate, bounded pool
in tests exactly as in production.
"""

from __future__ import annotations

from typing import Any

from django.db.backends.postgresql.creation import DatabaseCreation as PostgresCreation

from django_poolguard.engine.pool import all_pools, discard_pool, stop_background
from django_poolguard.engine.side_connection import close_all

OWN_OPTIONS = ("pool", "poolguard")


class DatabaseCreation(PostgresCreation):
    def set_as_test_mirror(self, primary_settings_dict: dict[str, Any]) -> None:
        own = self.connection.settings_dict.get("OPTIONS") or {}
        options = {
            k: v for k, v in (primary_settings_dict.get("OPTIONS") or {}).items() if k not in OWN_OPTIONS
        }
        options.update({k: own[k] for k in OWN_OPTIONS if k in own})
        self.connection.close_pool()
        # In place, as Django's own mirror does: the dict is shared with connections.settings, so
        # wrappers created later in other threads (and routers comparing aliases) see the test database.
        settings_dict = self.connection.settings_dict
        test = settings_dict.get("TEST", {})  # keeps "MIRROR", so the mirror stays recognisable
        settings_dict.clear()
        settings_dict.update({**primary_settings_dict, "OPTIONS": options, "TEST": test})

    def _destroy_test_db(self, test_database_name: str, verbosity: int) -> Any:
        # DROP DATABASE needs every session gone, and Django only closes the primary's pool:
        # close the mirrors' pools (a worker alias) and poolguard's side connections (published
        # snapshots, leak events), stopping the watchdog first so it cannot reopen one in between.
        from django.db import connections  # at teardown, as Django's own creation does

        stop_background()
        close_all()
        for alias, pool in all_pools().items():
            if alias == self.connection.alias:
                continue
            if connections.settings.get(alias, {}).get("NAME") == test_database_name:
                if discard_pool(alias, pool) is not None:
                    pool.close(timeout=5)
        return super()._destroy_test_db(test_database_name, verbosity)  # type: ignore[misc]
