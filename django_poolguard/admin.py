"""The admin's "Poolguard" section: the live **Connection pools** dashboard and the
**Leak events** history.

The dashboard hangs off the table-less ``Pool`` model: its changelist is the dashboard,
``data/`` is the JSON the page refreshes itself from, and ``sessions/…`` cancels or
terminates a database session after a confirmation step. Everything goes through
``admin_site.admin_view`` (staff only, login redirect, CSRF, never cached).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, cast

import psycopg
from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
    JsonResponse,
)
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join

from django_poolguard.escaping import escape_controls
from django_poolguard.fleet import activity
from django_poolguard.models import LeakEvent, Pool
from django_poolguard.web import dashboard

logger = logging.getLogger("django_poolguard")

MIN_REFRESH, MAX_REFRESH = 1, 3600


@admin.register(Pool)
class PoolAdmin(admin.ModelAdmin):
    """Connection pools: a dashboard instead of a changelist; nothing to add, change or delete."""

    #: Seconds between the dashboard's refreshes; ``?refresh=N`` overrides it per page.
    refresh_seconds = 5

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_active and request.user.has_perm("django_poolguard.view_pool")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_signal_permission(self, request: HttpRequest) -> bool:
        """May cancel or terminate database sessions: someone who may look at the dashboard
        and is a superuser or has ``terminate_session``."""
        return self.has_view_permission(request) and (
            request.user.is_superuser or request.user.has_perm("django_poolguard.terminate_session")
        )

    def get_urls(self) -> list[URLPattern]:
        # Only the dashboard's own URLs: Pool has no rows, so no change/history/delete pages.
        name = f"{self.opts.app_label}_{self.opts.model_name}"
        wrap = self.admin_site.admin_view
        return [
            path("", wrap(self.changelist_view), name=f"{name}_changelist"),
            path("data/", wrap(self.data_view), name=f"{name}_data"),
            path(
                "sessions/<str:alias>/<int:pid>/<str:action>/",
                wrap(self.session_action_view),
                name=f"{name}_session",
            ),
        ]

    # --- the dashboard -------------------------------------------------------------------

    def _refresh(self, request: HttpRequest) -> int:
        try:
            seconds = int(request.GET.get("refresh", self.refresh_seconds))
        except ValueError:
            seconds = self.refresh_seconds
        return max(MIN_REFRESH, min(seconds, MAX_REFRESH))

    def _dashboard_context(self, request: HttpRequest) -> dict[str, Any]:
        refresh = self._refresh(request)
        data_url = reverse(f"{self.admin_site.name}:django_poolguard_pool_data")
        return {
            **dashboard.build(),
            "can_signal": self.has_signal_permission(request),
            "can_view_leaks": self.admin_site.is_registered(LeakEvent)
            and (
                request.user.has_perm("django_poolguard.view_leakevent")
                or request.user.has_perm("django_poolguard.change_leakevent")
            ),
            "refresh_seconds": refresh,
            "data_url": f"{data_url}?refresh={refresh}",
        }

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Connection pools",
            **self._dashboard_context(request),
            **(extra_context or {}),
        }
        return TemplateResponse(request, "django_poolguard/dashboard.html", context)

    def data_view(self, request: HttpRequest) -> HttpResponse:
        """The dashboard's body as JSON (``{"html": ..., "status": ...}``), for the page's refresh."""
        if request.method != "GET":
            return HttpResponseNotAllowed(["GET"])
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {"opts": self.opts, **self._dashboard_context(request)}
        html = render_to_string("django_poolguard/dashboard_body.html", context, request=request)
        return JsonResponse(
            {
                "generated_at": context["generated_at"],
                "status": context["status"],
                "refresh_seconds": context["refresh_seconds"],
                "html": html,
            }
        )

    # --- cancelling and terminating sessions ----------------------------------------------

    def session_action_view(self, request: HttpRequest, alias: str, pid: int, action: str) -> HttpResponse:
        """Confirm, then cancel or terminate one session; logged as an admin action.

        The dashboard's buttons POST here without ``confirm`` and get the confirmation page;
        its form POSTs ``confirm=yes`` with the session's start time, so a backend pid reused
        by a newer session in between is refused rather than signalled.
        """
        if not self.has_signal_permission(request):
            raise PermissionDenied
        if action not in activity.ACTIONS or alias not in dashboard.session_databases():
            raise Http404("No such database alias or action.")
        if request.method not in ("GET", "POST"):
            return HttpResponseNotAllowed(["GET", "POST"])
        dashboard_url = reverse(f"{self.admin_site.name}:django_poolguard_pool_changelist")
        try:
            session = _find_session(alias, pid)
        except psycopg.Error as exc:
            messages.error(
                request, f"The database could not be reached ({type(exc).__name__}); nothing was done."
            )
            return HttpResponseRedirect(dashboard_url)
        if session is None:
            messages.warning(request, f"Session {pid} has already ended; nothing was done.")
            return HttpResponseRedirect(dashboard_url)
        if request.method == "POST" and request.POST.get("confirm") == "yes":
            return self._signal(request, alias, session, action, dashboard_url)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"{'Cancel the query of' if action == CANCEL else 'Terminate'} session {pid}?",
            "alias": alias,
            "action": action,
            "session": session,
            "refused": _refusal(session),
            "dashboard_url": dashboard_url,
        }
        return TemplateResponse(request, "django_poolguard/session_confirm.html", context)

    def _signal(
        self, request: HttpRequest, alias: str, session: dict[str, Any], action: str, dashboard_url: str
    ) -> HttpResponse:
        pid = session["pid"]
        try:
            listed_start = float(request.POST["started"])
        except (KeyError, ValueError):
            listed_start = math.nan
        # NaN compares false with everything, so it would pass the same-session test below.
        if not math.isfinite(listed_start):
            messages.error(request, "The confirmation form was incomplete; nothing was done.")
            return HttpResponseRedirect(dashboard_url)
        if abs(listed_start - session["started"]) > SAME_SESSION_TOLERANCE:
            messages.error(
                request, f"Session {pid} is a newer session than the one you confirmed; nothing was done."
            )
            return HttpResponseRedirect(dashboard_url)
        refusal = _refusal(session)
        try:
            if refusal:
                raise activity.RefusedSession(refusal)
            signalled = activity.signal_session(alias, pid, action)
        except activity.RefusedSession as exc:
            messages.error(request, f"{exc} Nothing was done.")
            return HttpResponseRedirect(dashboard_url)
        except psycopg.Error as exc:
            messages.error(
                request, f"The database could not be reached ({type(exc).__name__}); nothing was done."
            )
            return HttpResponseRedirect(dashboard_url)
        if not signalled:
            messages.error(
                request,
                f"PostgreSQL did not {action} session {pid}: it has just ended, or the database user "
                "lacks the pg_signal_backend role.",
            )
            return HttpResponseRedirect(dashboard_url)
        done = "Cancelled the query of" if action == CANCEL else "Terminated"
        description = (
            f"{done} session {pid} on alias {alias!r}: user {session['user']}, "
            f"application {session['application_name'] or '-'}, {session['state'] or 'no state'} "
            f"for {session['age_s']:.1f} s."
        )
        log_change(request, [Pool(pk=pid)], description)
        logger.warning("%s Done by admin user %s.", escape_controls(description), request.user.get_username())
        messages.success(request, description)
        return HttpResponseRedirect(dashboard_url)


def log_change(request: HttpRequest, objects: list[Any], message: str) -> None:
    """One admin LogEntry (CHANGE) per object, shown in the admin's history and "Recent actions".

    ``log_actions`` exists since Django 5.1 and is the only API left in 6.0 (``log_action``
    was removed), so this one call serves every supported Django.
    """
    LogEntry.objects.log_actions(
        user_id=cast(int, request.user.pk), queryset=objects, action_flag=CHANGE, change_message=message
    )


CANCEL = "cancel"
SAME_SESSION_TOLERANCE = 2.0  # s: two readings of one session's start differ only by clock reading jitter


def _find_session(alias: str, pid: int) -> dict[str, Any] | None:
    """The session ``pid`` of ``alias``'s database, with ``started`` (epoch s) and ``age_s``."""
    for session in activity.sessions(alias):
        if session["pid"] == pid:
            session["started"] = time.time() - float(session["connected_s"] or 0.0)
            session["age_s"] = activity.session_age(session)
            return session
    return None


def _refusal(session: dict[str, Any]) -> str:
    """Why the admin will not signal this session, or ``""``."""
    if session["own"]:
        return f"Session {session['pid']} is poolguard's own connection."
    if session["superuser"]:
        return f"Session {session['pid']} belongs to a superuser; it is not signalled from the admin."
    return ""


@admin.register(LeakEvent)
class LeakEventAdmin(admin.ModelAdmin):
    """The leak history: browse, filter, search, read the stack, mark resolved. Read-only otherwise."""

    list_display = (
        "kind",
        "alias",
        "context",
        "origin",
        "count",
        "held_seconds",
        "first_seen",
        "last_seen",
        "resolved",
    )
    list_filter = ("alias", "workload", "kind", "resolved", "last_seen")
    search_fields = ("context", "stack")
    date_hierarchy = "last_seen"
    actions = ["mark_resolved"]
    fieldsets = (
        (None, {"fields": ("kind", "alias", "workload", "context", "resolved")}),
        ("Where", {"fields": ("host", "pid", "thread", "stack_lines", "fingerprint")}),
        ("When", {"fields": ("held_seconds", "count", "first_seen", "last_seen")}),
    )

    class Media:
        css = {"all": ("django_poolguard/poolguard.css",)}

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [str(field) for _, options in self.fieldsets for field in options["fields"]]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Rows are never edited by hand; the change permission only enables "mark resolved".
        return obj is None and super().has_change_permission(request)

    @admin.display(description="where")
    def origin(self, obj: LeakEvent) -> str:
        """The stack's first line: the place in the application that took the connection."""
        first = next((line for line in (obj.stack or "").splitlines() if line.strip()), "")
        return format_html("<code>{}</code>", first) if first else "-"

    @admin.display(description="acquire stack")
    def stack_lines(self, obj: LeakEvent) -> str:
        lines = [line for line in (obj.stack or "").splitlines() if line.strip()]
        if not lines:
            return "-"
        return format_html(
            '<ol class="poolguard-stack">{}</ol>',
            format_html_join("", "<li><code>{}</code></li>", ((line,) for line in lines)),
        )

    @admin.action(permissions=["change"], description="Mark selected leak events as resolved")
    def mark_resolved(self, request: HttpRequest, queryset: QuerySet[LeakEvent]) -> None:
        pending = list(queryset.filter(resolved=False))
        LeakEvent.objects.filter(pk__in=[event.pk for event in pending]).update(resolved=True)
        if pending:
            log_change(request, pending, "Marked resolved.")
        self.message_user(request, f"{len(pending)} leak event(s) marked resolved.", messages.SUCCESS)
