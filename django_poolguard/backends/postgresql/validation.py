"""The engine's own system check: it works without the ``django_poolguard`` app, but unguarded.

The app starts the watchdog (leak reports, dead-thread reclaim, hoarding, alerts) and registers
poolguard's other checks; without it the pool is Django's plus a ledger nobody reads, and a
connection held by a thread that died is lost as with Django's pool. The engine cannot register
checks of its own without the app, so it says so through its validation class (which Django
runs for ``check --database`` and ``migrate``) and in its first log line.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.core.checks import Warning
from django.db.backends.base.validation import BaseDatabaseValidation

W011 = "django_poolguard.W011"
FIX = "Add 'django_poolguard' to INSTALLED_APPS, or use Django's own 'django.db.backends.postgresql'."


def without_app(alias: str) -> str:
    """What is missing, for the check and for the log line."""
    return (
        f"DATABASES[{alias!r}] uses the poolguard engine but 'django_poolguard' is not in INSTALLED_APPS: "
        "its pool runs with no watchdog (no leak reports, no reclaim of connections held by dead "
        "threads, no alerts) and poolguard's other system checks do not run."
    )


class DatabaseValidation(BaseDatabaseValidation):
    def check(self, **kwargs: Any) -> list[Any]:
        issues: list[Any] = super().check(**kwargs)
        if not apps.is_installed("django_poolguard"):
            alias = self.connection.alias
            issues.append(Warning(without_app(alias), hint=FIX, obj=alias, id=W011))
        return issues
