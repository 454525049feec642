"""The admin's Poolguard section, through Django's test client on the real database:
who may see the dashboard, what it shows, cancelling/terminating real sessions, and the
leak history."""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import Permission, User
from django.db import connections
from django.test import Client
from django.utils import timezone

from django_poolguard.engine.pool import get_pool
from django_poolguard.engine.side_connection import close_all
from django_poolguard.models import LeakEvent
from tests.waiting import queue_waiters

pytestmark = pytest.mark.django_db(transaction=True)

DASHBOARD = "/admin/django_poolguard/pool/"
DATA = "/admin/django_poolguard/pool/data/"
LEAKS = "/admin/django_poolguard/leakevent/"


def session_url(pid: int, action: str = "terminate", alias: str = "default") -> str:
    return f"{DASHBOARD}sessions/{alias}/{pid}/{action}/"


@pytest.fixture(autouse=True)
def _close_side_connections() -> Iterator[None]:
    yield
    close_all()  # the dashboard's out-of-pool connection, so the test database can be dropped


def make_user(username: str, *perms: str, staff: bool = True, superuser: bool = False) -> User:
    user = User.objects.create_user(username, password="pw", is_staff=staff, is_superuser=superuser)
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return user


def client_for(user: User, **kwargs: Any) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client


# --- a real session sleeping in the test database, owned by a plain (non-superuser) role ---------


class SleepingSession(threading.Thread):
    """``SELECT pg_sleep(60)`` on its own psycopg connection; records how it ended."""

    def __init__(self, sql: str = "SELECT pg_sleep(60)", **params: Any) -> None:
        super().__init__(name="sleeping-session", daemon=True)
        self.sql = sql
        self.params = params
        self.pid: int | None = None
        self.ready = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(**self.params, autocommit=True) as conn:
                self.pid = conn.info.backend_pid
                self.ready.set()
                conn.execute(self.sql)
        except BaseException as exc:  # the test reads how the session ended
            self.error = exc
        finally:
            self.ready.set()


@pytest.fixture
def sleeping_session() -> Iterator[Callable[..., SleepingSession]]:
    """Start sessions sleeping in the test database; ``superuser=False`` uses a plain role."""
    settings_dict = connections["default"].settings_dict
    base = {
        "host": settings_dict["HOST"] or None,
        "port": settings_dict["PORT"] or None,
        "dbname": settings_dict["NAME"],
        "application_name": "sleeper-under-test",
    }
    role = f"{settings_dict['NAME']}_sleeper"[:63]
    password = secrets.token_hex(8)
    started: list[SleepingSession] = []
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        if not cursor.fetchone()[0]:
            pytest.skip("creating a plain role for the sleeping session needs a superuser test database user")
        cursor.execute(f'DROP ROLE IF EXISTS "{role}"')
        cursor.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'")

    def start(superuser: bool = False, sql: str = "SELECT pg_sleep(60)") -> SleepingSession:
        params = dict(base)
        if superuser:
            params.update(user=settings_dict["USER"], password=settings_dict["PASSWORD"] or None)
        else:
            params.update(user=role, password=password)
        session = SleepingSession(sql, **params)
        session.start()
        assert session.ready.wait(10) and session.pid, (
            f"the sleeping session did not start: {session.error!r}"
        )
        started.append(session)
        _wait_until_sleeping(session.pid)
        return session

    yield start
    with connections["default"].cursor() as cursor:
        for session in started:
            cursor.execute("SELECT pg_terminate_backend(%s)", [session.pid])
        for session in started:
            session.join(10)
        cursor.execute(f'DROP ROLE IF EXISTS "{role}"')


def _wait_until_sleeping(pid: int) -> None:
    for _ in range(100):
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT query FROM pg_stat_activity WHERE pid = %s AND state = 'active'", [pid])
            row = cursor.fetchone()
        if row and "pg_sleep" in row[0]:
            return
        threading.Event().wait(0.05)
    raise AssertionError(f"session {pid} never started sleeping")


def backend_alive(pid: int) -> bool:
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
        return cursor.fetchone()[0] == 1


# --- who may look ---------------------------------------------------------------------------


def test_admin_index_has_a_poolguard_section(client):
    client.force_login(make_user("root", superuser=True))
    page = client.get("/admin/").content.decode()
    assert "Poolguard" in page
    assert f'<a href="{DASHBOARD}">Connection pools</a>' in page
    assert f'<a href="{LEAKS}">Leak events</a>' in page
    assert client.get("/admin/django_poolguard/").status_code == 200


@pytest.mark.parametrize("url", [DASHBOARD, DATA, session_url(1234)])
def test_anonymous_users_are_sent_to_the_login_page(client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/?next=")


@pytest.mark.parametrize("url", [DASHBOARD, DATA])
def test_staff_without_the_view_permission_get_403(url):
    client = client_for(make_user("staff"))
    assert client.get(url).status_code == 403


def test_terminate_permission_alone_does_not_open_the_dashboard_or_its_actions():
    client = client_for(make_user("half", "django_poolguard.terminate_session"))
    assert client.get(DASHBOARD).status_code == 403
    assert client.post(session_url(1234), {"confirm": "yes"}).status_code == 403


def test_non_staff_users_with_the_permission_still_cannot_look():
    client = client_for(make_user("outsider", "django_poolguard.view_pool", staff=False))
    response = client.get(DASHBOARD)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert client.get(DATA).status_code == 302


def test_staff_with_view_pool_see_pools_and_holders_but_no_session_buttons(make_alias, holders):
    alias = make_alias(pool={"min_size": 0, "max_size": 3, "timeout": 2})
    holders(alias, name="report-builder")
    client = client_for(make_user("viewer", "django_poolguard.view_pool"))

    response = client.get(DASHBOARD)
    assert response.status_code == 200
    page = response.content.decode()
    card = re.search(rf'<article class="pg-card[^"]*" data-alias="{alias}">(.*?)</article>', page, re.S)
    assert card, "one card per alias"
    assert re.search(r'<dd class="pg-in-use">1</dd>', card.group(1))
    assert re.search(r'<dd class="pg-max">3</dd>', card.group(1))
    assert "report-builder" in page  # the holder thread
    assert "in Holder.hold_connection" in page  # its acquire stack names the function holding the connection
    assert "Terminate" not in page and "Cancel</button>" not in page
    # Staff who may not terminate are refused even with a hand-made POST.
    assert client.post(session_url(1234), {"confirm": "yes"}).status_code == 403


OTHER_PROCESS = """
import sys, threading
import django
django.setup()
from django.db import connections
from django_poolguard.engine.context import checkout_context, set_process_role
from django_poolguard.fleet.publish import publish_now

set_process_role("worker")

def export_orders_for_finance():
    with checkout_context("task shop.tasks.export_orders[7f3a]"):
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT 1")
            assert publish_now(), "could not publish"
            print("holding", flush=True)
            sys.stdin.readline()
        connections["default"].close()

export_orders_for_finance()
"""


def test_the_dashboard_shows_other_processes_of_the_fleet(tmp_path):
    """A second OS process publishes its snapshot; the page lists it and its holder."""
    import os
    import subprocess
    import sys

    settings_dict = connections["default"].settings_dict
    from urllib.parse import quote

    credentials = quote(settings_dict["USER"] or "", safe="")
    if settings_dict["PASSWORD"]:
        credentials += ":" + quote(settings_dict["PASSWORD"], safe="")
    host = quote(settings_dict["HOST"] or "", safe="")
    url = f"postgresql://{credentials}@/{settings_dict['NAME']}?host={host}&port={settings_dict['PORT'] or 5432}"
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "PYTHONPATH": os.getcwd(),
    }
    worker = subprocess.Popen(
        [sys.executable, "-c", OTHER_PROCESS],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = worker.stdout.readline()
        assert line.strip() == "holding", worker.stderr.read()
        page = client_for(make_user("viewer", "django_poolguard.view_pool")).get(DASHBOARD).content.decode()
        processes = re.search(r'<table class="pg-table pg-processes">.*?</table>', page, re.S).group(0)
        assert re.search(rf"<td>{worker.pid}</td><td>worker</td><td>default</td>", processes)
        checkouts = re.search(r'<table class="pg-table pg-checkouts">.*?</table>', page, re.S).group(0)
        row = re.search(rf"<tr[^>]*>(?:(?!</tr>).)*?:{worker.pid}</td>.*?</tr>", checkouts, re.S).group(0)
        assert "task shop.tasks.export_orders[7f3a]" in row
        assert "in export_orders_for_finance" in row
    finally:
        try:
            worker.communicate("\n", timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.communicate()


def test_the_json_view_returns_the_refreshed_body(make_alias, holders):
    alias = make_alias()
    client = client_for(make_user("viewer", "django_poolguard.view_pool"))
    before = client.get(DATA).json()
    holder = holders(alias, name="late-holder")
    after = client.get(DATA)
    assert after["Content-Type"] == "application/json"
    assert "no-cache" in after["Cache-Control"] or "no-store" in after["Cache-Control"]
    body = after.json()
    assert "late-holder" not in before["html"] and "late-holder" in body["html"]
    assert body["status"] in ("healthy", "warning", "critical")
    holder.release()
    assert "late-holder" not in client.get(DATA).json()["html"]
    assert client.post(DATA).status_code == 405


def test_superusers_see_cancel_and_terminate_for_plain_sessions_only(sleeping_session):
    plain = sleeping_session()
    protected = sleeping_session(superuser=True)
    page = client_for(make_user("root", superuser=True)).get(DASHBOARD).content.decode()
    rows = dict(re.findall(r'<tr class="[^"]*" data-pid="(\d+)">(.*?)</tr>', page, re.S))
    assert f'action="{session_url(plain.pid)}"' in rows[str(plain.pid)]
    assert f'action="{session_url(plain.pid, "cancel")}"' in rows[str(plain.pid)]
    assert "pg_sleep(60)" in rows[str(plain.pid)]
    assert "protected" in rows[str(protected.pid)] and "<form" not in rows[str(protected.pid)]


def test_sessions_are_listed_busy_first_then_longest_first(sleeping_session):
    older = sleeping_session()
    threading.Event().wait(1.0)
    newer = sleeping_session()
    page = client_for(make_user("viewer", "django_poolguard.view_pool")).get(DASHBOARD).content.decode()
    pids = [int(pid) for pid in re.findall(r'<tr class="[^"]*" data-pid="(\d+)">', page)]
    states = re.findall(r'<tr class="(pg-row-busy)?" data-pid="\d+">', page)
    assert pids.index(older.pid) < pids.index(newer.pid)
    # Busy rows form one block at the top; idle ones follow.
    assert states == sorted(states, key=lambda busy: not busy)
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'poolguard:%%'")
        assert cursor.fetchone()[0] >= 1  # the page read the sessions over its side connection...
    sessions_table = re.search(r'<table class="pg-table pg-sessions">.*?</table>', page, re.S).group(0)
    assert "poolguard:default:" not in sessions_table  # ...and does not list that session of its own


# --- terminating and cancelling real sessions -----------------------------------------------


def _confirm_form(client: Client, url: str) -> dict[str, str]:
    """Open the confirmation step (a POST from the dashboard's button) and read its form."""
    response = client.post(url, {"csrfmiddlewaretoken": _token(client)})
    assert response.status_code == 200, response
    page = response.content.decode()
    return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', page))


def _token(client: Client) -> str:
    page = client.get(DASHBOARD).content.decode()
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)


def test_terminate_asks_for_confirmation_then_kills_the_session_and_logs_it(sleeping_session):
    session = sleeping_session()
    user = make_user("oncall", "django_poolguard.view_pool", "django_poolguard.terminate_session")
    client = client_for(user, enforce_csrf_checks=True)

    confirm = client.get(session_url(session.pid))
    assert confirm.status_code == 200
    assert "pg_sleep(60)" in confirm.content.decode() and "sleeper-under-test" in confirm.content.decode()
    form = _confirm_form(client, session_url(session.pid))
    assert form["confirm"] == "yes" and form["started"]
    assert backend_alive(session.pid), "asking for confirmation must not signal anything"

    response = client.post(session_url(session.pid), form)
    assert response.status_code == 302 and response["Location"] == DASHBOARD
    session.join(10)
    assert isinstance(session.error, psycopg.OperationalError)
    assert "terminat" in str(session.error)
    assert not backend_alive(session.pid)

    entry = LogEntry.objects.get(user=user)
    assert entry.action_flag == CHANGE
    assert entry.object_id == str(session.pid)
    assert entry.content_type.model == "pool"
    assert f"Terminated session {session.pid}" in entry.change_message
    assert "sleeper-under-test" in entry.change_message
    # The dashboard says what happened, and the admin index lists it under "Recent actions".
    assert f"Terminated session {session.pid}" in client.get(DASHBOARD).content.decode()
    index = client.get("/admin/")
    assert index.status_code == 200 and f"database session {session.pid}" in index.content.decode()


def test_cancel_stops_the_query_and_keeps_the_session(sleeping_session):
    session = sleeping_session()
    client = client_for(make_user("root", superuser=True))
    form = _confirm_form(client, session_url(session.pid, "cancel"))
    client.post(session_url(session.pid, "cancel"), form)
    session.join(10)
    assert isinstance(session.error, psycopg.errors.QueryCanceled)
    assert "Cancelled the query of session" in LogEntry.objects.get().change_message


def test_terminate_without_a_csrf_token_is_refused(sleeping_session):
    session = sleeping_session()
    client = client_for(make_user("root", superuser=True), enforce_csrf_checks=True)
    form = _confirm_form(client, session_url(session.pid))
    del form["csrfmiddlewaretoken"]
    response = client.post(session_url(session.pid), form)
    assert response.status_code == 403
    assert backend_alive(session.pid)
    assert not LogEntry.objects.exists()


def test_superuser_sessions_are_never_terminated_from_the_admin(sleeping_session):
    session = sleeping_session(superuser=True)
    client = client_for(make_user("root", superuser=True))
    confirm = client.get(session_url(session.pid)).content.decode()
    assert "belongs to a superuser" in confirm and 'name="confirm"' not in confirm

    with connections["default"].cursor() as cursor:
        cursor.execute(
            "SELECT extract(epoch FROM backend_start) FROM pg_stat_activity WHERE pid = %s", [session.pid]
        )
        started = cursor.fetchone()[0]
    response = client.post(session_url(session.pid), {"confirm": "yes", "started": str(started)})
    assert response.status_code == 302
    assert backend_alive(session.pid)
    assert "superuser" in client.get(DASHBOARD).content.decode()
    assert not LogEntry.objects.exists()


def test_a_reused_pid_is_not_signalled(sleeping_session):
    session = sleeping_session()
    client = client_for(make_user("root", superuser=True))
    form = _confirm_form(client, session_url(session.pid))
    form["started"] = str(float(form["started"]) - 3600)  # "the session listed then" started an hour earlier
    client.post(session_url(session.pid), form)
    assert backend_alive(session.pid)
    assert "newer session" in client.get(DASHBOARD).content.decode()


@pytest.mark.parametrize("started", ["nan", "inf"])
def test_a_non_finite_start_time_is_refused(sleeping_session, started):
    # NaN compares false with everything: it would pass "is this the session you confirmed?".
    session = sleeping_session()
    client = client_for(make_user("root", superuser=True))
    form = _confirm_form(client, session_url(session.pid))
    form["started"] = started
    client.post(session_url(session.pid), form)
    assert backend_alive(session.pid)
    assert "The confirmation form was incomplete" in client.get(DASHBOARD).content.decode()
    assert not LogEntry.objects.exists()


def test_unknown_aliases_and_actions_are_404():
    client = client_for(make_user("root", superuser=True))
    assert client.get(session_url(1, alias="nope")).status_code == 404
    assert client.get(session_url(1, action="kill")).status_code == 404


def test_password_literals_in_session_sql_are_redacted(sleeping_session):
    sql = (
        "/* provisioning: ALTER ROLE app PASSWORD 'hunter2' */ "
        "SELECT pg_sleep(60), 'pbkdf2_sha256$1000000$salt$c2VjcmV0LWhhc2g=' AS hash"
    )
    session = sleeping_session(sql=sql)
    client = client_for(make_user("root", superuser=True))
    for page in (
        client.get(DASHBOARD).content.decode(),
        client.get(session_url(session.pid)).content.decode(),
    ):
        assert "SELECT pg_sleep(60), &#x27;***&#x27; AS hash" in page
        assert "PASSWORD &#x27;***&#x27;" in page
        assert "c2VjcmV0LWhhc2g" not in page and "hunter2" not in page
    # The same rows feed the commands: the secret never reaches a terminal or a JSON pipe either.
    from io import StringIO

    from django.core.management import call_command

    for options in (["--json"], []):
        out = StringIO()
        call_command("poolactivity", *options, stdout=out)
        assert str(session.pid) in out.getvalue()
        assert "hunter2" not in out.getvalue() and "c2VjcmV0LWhhc2g" not in out.getvalue()


@pytest.mark.timing
def test_an_exhausted_pool_is_shown_at_once_with_its_holder_and_waiters(make_alias, holders):
    alias = make_alias(pool={"min_size": 0, "max_size": 1, "timeout": 10})
    hog = holders(alias, name="hog")
    waiters = queue_waiters(alias, 2, within=5)
    client = client_for(make_user("root", superuser=True))

    started = time.monotonic()
    page = client.get(DASHBOARD).content.decode()
    elapsed = time.monotonic() - started
    card = re.search(rf'<article class="pg-card ([^"]*)" data-alias="{alias}">(.*?)</article>', page, re.S)
    assert card.group(1) == "pg-card-warning"
    assert '<dd class="pg-in-use">1</dd>' in card.group(2) and '<dd class="pg-waiting">2</dd>' in card.group(
        2
    )
    assert "hog" in page
    # Read beside the pool, not through it: far below the 10 s the waiters are stuck for.
    assert elapsed < 3, f"the dashboard took {elapsed:.1f} s with the pool exhausted"

    hog.release()
    for waiter in waiters:
        waiter.join(10)


class AdminRouter:
    """The docs' tip: the admin's own tables on a small pool of their own."""

    alias = "default"
    apps = {"admin", "auth", "contenttypes", "sessions"}

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return self.alias if model._meta.app_label in self.apps else None

    db_for_write = db_for_read


@pytest.mark.timing
def test_with_its_own_pool_the_admin_stays_reachable_when_default_is_exhausted(make_alias, holders, settings):
    AdminRouter.alias = make_alias(pool={"min_size": 0, "max_size": 2, "timeout": 5})
    settings.DATABASE_ROUTERS = [f"{__name__}.AdminRouter"]
    client = client_for(make_user("root", superuser=True))
    connections["default"].close()
    size = get_pool("default").max_size
    for n in range(size):
        holders("default", name=f"default-hog-{n}")
    assert get_pool("default").state()["in_use"] == size

    started = time.monotonic()
    response = client.get(DASHBOARD)
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    card = re.search(r'data-alias="default">(.*?)</article>', response.content.decode(), re.S).group(1)
    assert f'<dd class="pg-in-use">{size}</dd>' in card
    assert elapsed < 3, f"the dashboard waited {elapsed:.1f} s on the exhausted default pool"


def test_an_unreachable_database_is_reported_not_fatal(make_alias):
    make_alias(HOST="127.0.0.1", PORT="1")  # nothing listens there
    client = client_for(make_user("root", superuser=True))
    response = client.get(DASHBOARD)
    assert response.status_code == 200
    page = response.content.decode()
    assert "The sessions could not be listed (OperationalError)" in page
    assert 'data-alias="default"' in page  # the rest of the page is there


def test_without_publishing_the_page_shows_this_process(make_alias, holders, settings):
    settings.POOLGUARD = {"WORKLOADS": {"web": "default"}, "PUBLISH": None}
    alias = make_alias()
    holders(alias, name="unpublished-holder")
    page = client_for(make_user("root", superuser=True)).get(DASHBOARD).content.decode()
    assert f'data-alias="{alias}"' in page and "unpublished-holder" in page
    assert "live (this process)" in page


def test_passwords_never_reach_the_page(make_alias):
    alias = make_alias(PASSWORD="s3cret-do-not-show")
    connections.settings[alias]["PASSWORD"] = "s3cret-do-not-show"
    client = client_for(make_user("root", superuser=True))
    assert "s3cret-do-not-show" not in client.get(DASHBOARD).content.decode()
    assert "s3cret-do-not-show" not in client.get(DATA).content.decode()


# --- leak history -----------------------------------------------------------------------------

STACK = "shop/views.py:41 in checkout\nshop/reports.py:88 in build_report\ndjango/core/handlers/base.py:197 in _get_response"


def leak(**fields: Any) -> LeakEvent:
    now = timezone.now()
    values = {
        "alias": "default",
        "workload": "web",
        "kind": LeakEvent.Kind.LEAK,
        "context": "GET /api/report",
        "host": "web-1",
        "pid": 4242,
        "thread": "worker-3",
        "stack": STACK,
        "fingerprint": secrets.token_hex(8),
        "held_seconds": 42.5,
        "first_seen": now - timedelta(hours=1),
        "last_seen": now,
        "count": 7,
        **fields,
    }
    return LeakEvent.objects.create(**values)


def test_leak_changelist_shows_filters_and_searches():
    report = leak()
    leak(
        alias="worker",
        workload="worker",
        kind=LeakEvent.Kind.HOARD,
        context="task shop.tasks.export[1]",
        stack="shop/tasks.py:12 in export",
    )
    old = leak(
        context="POST /checkout",
        resolved=True,
        last_seen=timezone.now() - timedelta(days=30),
        first_seen=timezone.now() - timedelta(days=31),
    )
    client = client_for(make_user("viewer", "django_poolguard.view_leakevent"))

    page = client.get(LEAKS).content.decode()
    assert "GET /api/report" in page and "task shop.tasks.export[1]" in page and "POST /checkout" in page
    for header in ("Kind", "Alias", "Context", "Where", "Count", "First seen", "Last seen", "Resolved"):
        assert header in page
    assert "<code>shop/views.py:41 in checkout</code>" in page  # the stack's first line

    def listed(query: str) -> set[int]:
        response = client.get(LEAKS + query)
        assert response.status_code == 200
        return {obj.pk for obj in response.context["cl"].result_list}

    assert listed("?alias=worker") == listed("?alias__exact=worker")
    assert len(listed("?alias__exact=worker")) == 1
    assert listed("?workload__exact=web") == {report.pk, old.pk}
    assert len(listed("?kind__exact=hoard")) == 1
    assert listed("?resolved__exact=1") == {old.pk}
    # The date filter's own "Past 7 days" link.
    changelist = client.get(LEAKS).context["cl"]
    [date_filter] = [spec for spec in changelist.filter_specs if spec.title == "last seen"]
    [past_week] = [
        c["query_string"] for c in date_filter.choices(changelist) if c["display"] == "Past 7 days"
    ]
    assert listed(past_week) == {report.pk, listed("?kind__exact=hoard").pop()}
    assert listed("?q=build_report") == {report.pk, old.pk}  # the stack is searched
    assert listed("?q=export") != set() and report.pk not in listed("?q=export")


def test_leak_detail_shows_the_stack_as_code_lines_read_only():
    event = leak()
    client = client_for(make_user("root", superuser=True))
    response = client.get(f"{LEAKS}{event.pk}/change/")
    assert response.status_code == 200
    page = response.content.decode()
    assert '<ol class="poolguard-stack"><li><code>shop/views.py:41 in checkout</code></li>' in page
    assert "<code>shop/reports.py:88 in build_report</code>" in page
    assert 'name="_save"' not in page and "<textarea" not in page  # nothing editable
    assert client.get(f"{LEAKS}add/").status_code == 403
    assert client.post(f"{LEAKS}{event.pk}/change/", {"resolved": "on"}).status_code == 403


def test_mark_resolved_action_resolves_and_logs():
    first, second, done = leak(), leak(context="GET /b"), leak(context="GET /c", resolved=True)
    user = make_user("oncall", "django_poolguard.view_leakevent", "django_poolguard.change_leakevent")
    client = client_for(user)
    response = client.post(
        LEAKS,
        {"action": "mark_resolved", "_selected_action": [first.pk, second.pk, done.pk]},
        follow=True,
    )
    assert "2 leak event(s) marked resolved." in response.content.decode()
    assert set(LeakEvent.objects.filter(resolved=True).values_list("pk", flat=True)) == {
        first.pk,
        second.pk,
        done.pk,
    }
    assert set(LogEntry.objects.filter(user=user).values_list("object_id", flat=True)) == {
        str(first.pk),
        str(second.pk),
    }


def test_view_only_staff_cannot_mark_resolved():
    event = leak()
    client = client_for(make_user("viewer", "django_poolguard.view_leakevent"))
    page = client.get(LEAKS).content.decode()
    assert "mark_resolved" not in page
    client.post(LEAKS, {"action": "mark_resolved", "_selected_action": [event.pk]})
    event.refresh_from_db()
    assert not event.resolved


def test_leak_history_is_staff_only():
    leak()
    anonymous = Client().get(LEAKS)
    assert anonymous.status_code == 302
    assert client_for(make_user("staff")).get(LEAKS).status_code == 403


# --- arranging the fleet's numbers -----------------------------------------------------------


def _fleet(**aliases: dict[str, Any]) -> dict[str, Any]:
    """One process with these aliases, read through the schema as fleet.collect() reads entries."""
    from django_poolguard.fleet.schema import Unreadable, read_entry

    sizes = {"min": 0, "max": 1, "size": 0, "in_use": 0, "idle": 0, "waiting": 0, "status": "healthy"}
    raw = {
        "host": "web-1",
        "pid": 1,
        "role": "web",
        "aliases": {a: {**sizes, **d} for a, d in aliases.items()},
    }
    process = read_entry(raw)
    assert not isinstance(process, Unreadable), process
    process["age_s"] = 2.0
    return {"processes": [process]}


def test_checkouts_are_listed_longest_first_and_capped():
    from django_poolguard.web import dashboard

    checkouts = [
        {"thread": f"t{i}", "alive": True, "held_s": float(i), "context": "GET /x", "stack": []}
        for i in range(60)
    ]
    context = dashboard.build(
        _fleet(default={"max": 60, "in_use": 60, "checkouts": checkouts}), with_sessions=False
    )
    assert [c["held_s"] for c in context["checkouts"]] == [float(i) for i in range(59, 9, -1)]
    assert context["more_checkouts"] == 10


def test_sparkline_follows_the_published_history_and_ends_at_the_live_numbers():
    from django_poolguard.fleet.collect import totals
    from django_poolguard.web import dashboard

    now = time.time()
    history = [[now - 600 + 5 * i, i % 5, 1, 0, 4, 0.5] for i in range(100)]
    fleet = _fleet(default={"max": 4, "in_use": 3, "waiting": 2, "status": "warning"})
    fleet["aliases"] = totals(fleet["processes"])  # what fleet.collect() puts beside the processes
    fleet["aliases"]["default"]["history"] = history
    [card] = dashboard.build(fleet, with_sessions=False)["cards"]
    spark = card["sparkline"]
    assert spark["minutes"] == 10  # the axis spans the history there is
    assert spark["peak_in_use"] == 4 and spark["peak_waiting"] == 2
    assert len(spark["in_use"].split()) == 101  # every point, plus the live one
    last_x, last_y = spark["in_use"].split()[-1].split(",")
    assert float(last_x) == dashboard.SPARK_WIDTH  # ends now...
    top = 5  # in use + waiting at the live point
    assert float(last_y) == pytest.approx(
        dashboard.SPARK_HEIGHT - 1 - 3 / top * (dashboard.SPARK_HEIGHT - 2), abs=0.1
    )
    assert spark["waiting"], "the waiting line is drawn when anyone waited"
    assert card["status"] == "warning" and card["utilization_pct"] == 75


def test_on_a_custom_admin_site_every_link_stays_on_it(settings, sleeping_session):
    settings.ROOT_URLCONF = "tests.custom_admin_urls"
    session = sleeping_session()
    client = client_for(make_user("root", superuser=True))
    response = client.get("/ops/django_poolguard/pool/")
    assert response.status_code == 200
    page = response.content.decode()
    assert 'data-url="/ops/django_poolguard/pool/data/?refresh=5"' in page
    assert 'href="/ops/django_poolguard/leakevent/?alias__exact=default"' in page
    assert f'action="/ops/django_poolguard/pool/sessions/default/{session.pid}/terminate/"' in page
    assert 'href="/admin/' not in page
    assert client.get("/ops/django_poolguard/pool/data/").status_code == 200
    confirm = client.get(f"/ops/django_poolguard/pool/sessions/default/{session.pid}/terminate/")
    assert confirm.status_code == 200 and 'href="/ops/django_poolguard/pool/"' in confirm.content.decode()
