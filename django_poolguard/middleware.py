"""``PoolGuardMiddleware``: label each request's checkouts, and shed load with a 503 when a pool is exhausted.

Put it near the top of ``MIDDLEWARE`` (above anything that may touch the database, such as the
session and authentication middleware):

* every checkout made while the request runs is attributed to ``"METHOD /path"`` in the ledger,
  so leak reports and exhaustion errors name the endpoint;
* a :class:`~django_poolguard.PoolExhausted` raised by the view, or by a middleware below this one,
  becomes ``503 Service Unavailable`` with ``Retry-After`` (JSON for clients that ask for JSON, one
  line of text otherwise), counted in the pool's ``shed_total``. Never a 500, and never a wait past
  the alias's pool ``timeout`` (the pool raises at the latest then, at once with a full ``max_waiting``
  queue).

Works in both sync (WSGI) and async (ASGI) stacks.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
from collections.abc import Awaitable, Callable
from time import monotonic
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.core.signals import got_request_exception
from django.http import HttpRequest, HttpResponse

from django_poolguard import _compat
from django_poolguard.conf import guard_settings
from django_poolguard.engine.context import reset_context, set_context
from django_poolguard.engine.pool import get_pool
from django_poolguard.engine.profile import Scope, reset_scope, route_label, set_scope
from django_poolguard.escaping import escape_controls
from django_poolguard.exceptions import PoolExhausted

logger = logging.getLogger("django_poolguard")

CONTEXT_PATH_CHARS = 120  # ledger labels stay short: a long path adds nothing an engineer needs
LOG_EVERY = 10.0  # s: under a spike, one WARNING per alias per interval instead of one per request
_EXHAUSTION_ATTRIBUTE = "_poolguard_exhausted"
_SCOPE_ATTRIBUTE = "_poolguard_scope"
#: Methods kept in profile labels; any other is "OTHER" (the method is the client's choice).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


class PoolGuardMiddleware:
    """Sets the ledger context for the request and turns pool exhaustion into a 503."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        token = set_context(request_label(request))
        scope_token = set_scope(request_scope(request)) if guard_settings.PROFILE else None
        try:
            response = self.get_response(request)
        finally:
            if scope_token is not None:
                reset_scope(scope_token)
            reset_context(token)
        return self._replace_converted_500(request, response)

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        token = set_context(request_label(request))
        scope_token = set_scope(request_scope(request)) if guard_settings.PROFILE else None
        try:
            get_response: Callable[[HttpRequest], Awaitable[HttpResponse]] = self.get_response
            response = await get_response(request)
        finally:
            if scope_token is not None:
                reset_scope(scope_token)
            reset_context(token)
        return self._replace_converted_500(request, response)

    def process_view(self, request: HttpRequest, view_func: Any, view_args: Any, view_kwargs: Any) -> None:
        """The URL is resolved: the request's checkouts are profiled under its pattern."""
        scope = getattr(request, _SCOPE_ATTRIBUTE, None)
        match = request.resolver_match
        if scope is not None and match is not None:
            scope.label = route_label(_method(request), escape_controls(match.route))

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        """The view raised: answer 503 before Django turns it into a 500 (and logs an error)."""
        exhausted = find_exhaustion(exception)
        if exhausted is None:
            return None
        return shed_response(request, exhausted)

    def _replace_converted_500(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        # Django converts an exception raised in a middleware below this one into a 500 before
        # it reaches us; the got_request_exception receiver left the cause on the request.
        exhausted = getattr(request, _EXHAUSTION_ATTRIBUTE, None)
        if exhausted is not None and response.status_code == 500:
            return shed_response(request, exhausted)
        return response


def request_label(request: HttpRequest) -> str:
    """``"GET /api/orders/"``: the method and path, without the query string.

    Control characters (a ``%0D%0A`` in the URL) are escaped: the label reaches log lines and
    ``PoolExhausted`` messages, where a raw line break would forge a line.
    """
    path = escape_controls(request.path)
    if len(path) > CONTEXT_PATH_CHARS:
        path = path[: CONTEXT_PATH_CHARS - 1] + "…"
    return f"{request.method} {path}"


def _method(request: HttpRequest) -> str:
    return request.method if request.method in METHODS else "OTHER"  # type: ignore[return-value]


def request_scope(request: HttpRequest) -> Scope:
    """The request's profile scope, ``"GET (no route)"`` until its URL pattern is known."""
    scope = Scope(route_label(_method(request), None))
    setattr(request, _SCOPE_ATTRIBUTE, scope)
    return scope


def find_exhaustion(exception: BaseException | None) -> PoolExhausted | None:
    """The ``PoolExhausted`` that ``exception`` is, or was raised from (a few links deep)."""
    for _ in range(5):
        if exception is None:
            return None
        if isinstance(exception, PoolExhausted):
            return exception
        exception = exception.__cause__ or exception.__context__
    return None


def shed_response(request: HttpRequest, exhausted: PoolExhausted) -> HttpResponse:
    """The 503 for a request refused because ``exhausted.alias``'s pool had no connection for it.

    The body says which database is busy and when to retry; the holders and code locations in
    the exception's message are for the logs, not for clients.
    """
    retry_after = max(1, math.ceil(float(guard_settings.RETRY_AFTER)))
    pool = get_pool(exhausted.alias)
    if pool is not None:
        pool.ledger.count("shed_total")
    _log_shed(exhausted)
    detail = (
        f"The database is busy (connection pool {exhausted.alias!r} exhausted). Retry in {retry_after} s."
    )
    if request.get_preferred_type(["text/plain", "application/json"]) == "application/json":
        body = {
            "error": "pool_exhausted",
            "detail": detail,
            "alias": exhausted.alias,
            "retry_after": retry_after,
        }
        response = HttpResponse(json.dumps(body), status=503, content_type="application/json")
    else:
        response = HttpResponse(detail + "\n", status=503, content_type="text/plain; charset=utf-8")
    response["Retry-After"] = str(retry_after)
    response["Cache-Control"] = "no-store"
    # Django logs every 5xx on django.request at ERROR; a spike would write one per shed request.
    # _log_shed already said it once per alias and interval.
    _compat.mark_response_logged(response)
    return response


# Guards _last_logged and _unlogged: many request threads shed at once during a spike.
_log_lock = threading.Lock()
_last_logged: dict[str, float] = {}
_unlogged: dict[str, int] = {}


def _log_shed(exhausted: PoolExhausted) -> None:
    alias = exhausted.alias
    now = monotonic()
    with _log_lock:
        _unlogged[alias] = _unlogged.get(alias, 0) + 1
        if now - _last_logged.get(alias, -math.inf) < LOG_EVERY:
            return
        count = _unlogged.pop(alias)
        _last_logged[alias] = now
    logger.warning(
        "Answered 503 to %d request(s) on alias %r since the last report because its pool is exhausted: %s",
        count,
        alias,
        escape_controls(str(exhausted)),  # it names holders: threads, tasks, request paths
    )


def _note_exhaustion(sender: Any, request: HttpRequest | None = None, **kwargs: Any) -> None:
    """``got_request_exception`` receiver: remember an exhaustion Django is about to turn into a 500.

    The signal is sent inside the ``except`` block (asgiref re-raises it in the worker thread
    for async stacks), so ``sys.exc_info()`` holds the exception.
    """
    if request is None:
        return
    exhausted = find_exhaustion(sys.exc_info()[1])
    if exhausted is not None:
        setattr(request, _EXHAUSTION_ATTRIBUTE, exhausted)


got_request_exception.connect(_note_exhaustion, dispatch_uid="django_poolguard.middleware.note_exhaustion")

__all__ = ["PoolGuardMiddleware", "request_label", "shed_response"]
