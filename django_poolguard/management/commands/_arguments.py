"""Argument checks shared by poolguard's commands: each error names the argument and the fix."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import CommandError

from django_poolguard.conf import is_postgresql
from django_poolguard.fleet.collect import default_alias


def postgres_alias(value: str | None, argument: str = "--alias") -> str:
    """A PostgreSQL alias of ``DATABASES``; the default one when ``value`` is ``None``."""
    alias = default_alias() if value is None else value
    if alias not in settings.DATABASES:
        raise CommandError(
            f"{argument}: unknown database alias {alias!r}; DATABASES has {', '.join(sorted(settings.DATABASES))}."
        )
    if not is_postgresql(settings.DATABASES[alias]):
        raise CommandError(f"{argument}: alias {alias!r} is not a PostgreSQL database.")
    return alias


def seconds(value: float | None, argument: str, *, allow_zero: bool = True) -> float | None:
    """``value`` when it is a usable number of seconds, else a ``CommandError`` naming ``argument``."""
    if value is None:
        return None
    if value != value or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise CommandError(f"{argument} must be a number of seconds {bound}, not {value:g}.")
    return value
