"""Test-database creation: a ``TEST["MIRROR"]`` alias points at its primary's database
but keeps its own pool and guard options, so a worker alias stays a separate, bounded pool
in tests exactly as in production.
"""

from __future__ import annotations

from typing import Any

from django.db.backends.postgresql.creation import DatabaseCreation as PostgresCreation

OWN_OPTIONS = ("pool", "poolguard")


class DatabaseCreation(PostgresCreation):
    def set_as_test_mirror(self, primary_settings_dict: dict[str, Any]) -> None:
        own = self.connection.settings_dict.get("OPTIONS") or {}
        options = {
            k: v for k, v in (primary_settings_dict.get("OPTIONS") or {}).items() if k not in OWN_OPTIONS
        }
        options.update({k: own[k] for k in OWN_OPTIONS if k in own})
        self.connection.close_pool()
        self.connection.settings_dict = {**primary_settings_dict, "OPTIONS": options}

    def _destroy_test_db(self, test_database_name: str, verbosity: int) -> None:
        # poolguard's side connection (published snapshots, leak events) would make
        # DROP DATABASE fail with "is being accessed by other users".
        # The watchdog stops first so it cannot reopen one in between.
        from ...monitor import watchdog
        from ...side_connection import close_all

        watchdog.stop()
        close_all()
        super()._destroy_test_db(test_database_name, verbosity)  # type: ignore[misc]
