"""Cursors that time their queries for the pool-time profile (:mod:`django_poolguard.engine.profile`).

Only the innermost ``_execute``/``_executemany`` are overridden: they run once per statement,
inside Django's execute wrappers and debug logging, so the time counted is the statement's
round trip and nothing of Django's own. A cursor of an unpooled connection (no checkout)
does no more than Django's. Server-side cursors' later fetches are not counted. Both methods
are private to Django: ``_compat.OVERRIDDEN_HOOKS`` and ``DJANGO_CURSOR_CLASSES`` have their canaries.
"""

from __future__ import annotations

from collections.abc import Callable
from time import monotonic
from typing import Any

from django.db.backends.utils import CursorWrapper

from django_poolguard._compat import DJANGO_CURSOR_CLASSES
from django_poolguard.conf import guard_settings
from django_poolguard.engine.profile import note_repeated_query


def _timed(inner: Callable[..., Any]) -> Callable[..., Any]:
    """``inner`` (Django's ``_execute`` or ``_executemany``), timed on the cursor's checkout."""

    # Django's own method is called directly, not through super(): cheaper, and the MRO is known.
    # Django calls both as executor(sql, params, many, context): named positionally, the call
    # to Django's method builds no argument tuple. A query runs while query_started > last_query
    # (sample_idle), so nothing is reset when it ends.
    def run(self: Any, sql: Any, arg: Any, many: Any = False, context: Any = None) -> Any:
        checkout = self.db._guard_checkout
        if checkout is None:
            return inner(self, sql, arg, many, context)
        checkout.query_started = started = monotonic()
        try:
            return inner(self, sql, arg, many, context)
        finally:
            checkout.last_query = ended = monotonic()
            checkout.db_time += ended - started
            checkout.queries = queries = checkout.queries + 1
            if queries >= guard_settings.PROFILE_N_PLUS_ONE:
                note_repeated_query(checkout, sql)

    return run


class _Timed:
    db: Any

    _execute = _timed(CursorWrapper._execute)  # type: ignore[attr-defined]
    _executemany = _timed(CursorWrapper._executemany)  # type: ignore[attr-defined]


class TimedCursorWrapper(_Timed, CursorWrapper):
    pass


class TimedCursorDebugWrapper(_Timed, DJANGO_CURSOR_CLASSES[1]):  # type: ignore[misc,valid-type]
    pass
