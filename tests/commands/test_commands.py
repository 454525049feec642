"""poolstats --check exit codes, poolactivity on real sessions, and bad command-line input."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections

from django_poolguard.engine.side_connection import connection_params
from tests.fleet_helpers import Fleet, fleet_env, make_fleet
from tests.waiting import queue_waiters

__all__ = ["fleet_env", "make_fleet"]  # fixtures used by this module

pytestmark = pytest.mark.django_db(transaction=True)


def check(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with pytest.raises(SystemExit) as exit_info:
        call_command("poolstats", "--check", *args, stdout=out)
    return int(exit_info.value.code or 0), out.getvalue()


def use_once(alias: str) -> None:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")
    connections[alias].close()


def test_check_exit_codes_follow_the_pool(make_alias: Callable[..., str], holders: Any) -> None:
    alias = make_alias(pool={"min_size": 0, "max_size": 2, "timeout": 10})
    use_once(alias)
    code, line = check("--alias", alias)
    assert (code, line.split(" - ")[0]) == (0, "POOLGUARD HEALTHY"), line

    first = holders(alias, name="report-1")
    second = holders(alias, name="report-2")
    code, line = check("--alias", alias)
    assert code == 1 and f"{alias}: 2/2 in use, 0 waiting" in line, line
    first.release()
    second.release()


def test_check_is_critical_when_many_wait_on_an_exhausted_pool(
    make_alias: Callable[..., str], holders: Any
) -> None:
    alias = make_alias(pool={"min_size": 0, "max_size": 1, "timeout": 20})
    holder = holders(alias, name="hog")
    waiters = queue_waiters(alias, 11)
    code, line = check("--alias", alias)
    assert code == 2 and "11 waiting" in line, line
    data = json.loads(_run("poolstats", "--json", "--alias", alias))
    assert data["aliases"][alias]["status"] == "critical"
    holder.release()
    for waiter in waiters:
        waiter.join(30)
    code, _ = check("--alias", alias)
    assert code == 0


def _run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


# --- poolactivity ----------------------------------------------------------------------------


class Sleeper(threading.Thread):
    """A session of the test database running ``pg_sleep`` until cancelled or terminated."""

    def __init__(self, alias: str = "default", user: str | None = None, application_name: str = "") -> None:
        super().__init__(daemon=True)
        params = connection_params(alias)
        params["application_name"] = application_name
        if user is not None:
            params["user"] = user
            params.pop("password", None)
        params["options"] = ""
        self.connection = psycopg.connect(**params)
        self.pid = self.connection.info.backend_pid
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.connection.execute("SELECT pg_sleep(60)")
        except BaseException as exc:
            self.error = exc

    def start_sleeping(self) -> Sleeper:
        self.start()
        with psycopg.connect(**connection_params("default")) as probe:
            for _ in range(100):
                row = probe.execute(
                    "SELECT state, query FROM pg_stat_activity WHERE pid = %s", [self.pid]
                ).fetchone()
                if row and row[0] == "active" and "pg_sleep" in row[1]:
                    return self
                time.sleep(0.05)
        raise AssertionError("the sleeper never started its query")

    def stop(self) -> None:
        if self.is_alive():
            try:
                self.connection.cancel_safe()
            except psycopg.Error:
                pass
        self.join(10)
        self.connection.close()


def _admin(sql: str, params: list[Any] | None = None) -> Any:
    with psycopg.connect(**connection_params("default")) as connection:
        return connection.execute(sql, params).fetchone()


@pytest.fixture
def plain_role(django_db_setup: Any) -> Iterator[str]:
    """A non-superuser login role (role names are server-wide: unique per run)."""
    role = f"poolguard_t4_{os.getpid()}"
    with psycopg.connect(**connection_params("default")) as connection:
        connection.execute(f'DROP ROLE IF EXISTS "{role}"')
        connection.execute(f'CREATE ROLE "{role}" LOGIN')
    yield role
    with psycopg.connect(**connection_params("default")) as connection:
        connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [role]
        )
        connection.execute(f'DROP ROLE IF EXISTS "{role}"')


@pytest.fixture
def sleepers() -> Iterator[Callable[..., Sleeper]]:
    started: list[Sleeper] = []

    def start(**kwargs: Any) -> Sleeper:
        sleeper = Sleeper(**kwargs)
        started.append(sleeper)
        return sleeper.start_sleeping()

    yield start
    for sleeper in started:
        sleeper.stop()


def _connected_as_superuser() -> bool:
    return bool(_admin("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")[0])


def test_poolactivity_cancels_a_pg_sleep_session(plain_role: str, sleepers: Callable[..., Sleeper]) -> None:
    sleeper = sleepers(user=plain_role, application_name="web:default:testhost:4242")
    listed = json.loads(_run("poolactivity", "--json", "--workload", "web", "--state", "active"))
    assert sleeper.pid in [s["pid"] for s in listed["sessions"]]
    session = next(s for s in listed["sessions"] if s["pid"] == sleeper.pid)
    assert session["user"] == plain_role and not session["superuser"] and "pg_sleep" in session["query"]
    for args in (("--workload", "worker"), ("--state", "idle"), ("--older-than", "3600")):
        listed = json.loads(_run("poolactivity", "--json", *args))
        assert sleeper.pid not in [s["pid"] for s in listed["sessions"]], args

    out = _run("poolactivity", "--cancel", "--pid", str(sleeper.pid), "--yes")
    assert f"cancelled the query of session {sleeper.pid}" in out
    sleeper.join(10)
    assert isinstance(sleeper.error, psycopg.errors.QueryCanceled)
    # Cancelling a query leaves the session connected.
    assert _admin("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [sleeper.pid])[0] == 1


def test_poolactivity_terminates_by_filter(plain_role: str, sleepers: Callable[..., Sleeper]) -> None:
    sleeper = sleepers(user=plain_role, application_name="worker:worker:testhost:4343")
    out = _run("poolactivity", "--terminate", "--workload", "worker", "--older-than", "0", "--yes", "--json")
    results = json.loads(out)["results"]
    assert {"pid": sleeper.pid, "done": True, "reason": ""} in results
    sleeper.join(10)
    assert isinstance(sleeper.error, psycopg.OperationalError)


def test_poolactivity_refuses_superuser_sessions_by_default(sleepers: Callable[..., Sleeper]) -> None:
    if not _connected_as_superuser():
        pytest.skip("the test database user is not a superuser, so it cannot start a superuser session")
    sleeper = sleepers(application_name="web:default:testhost:4444")
    with pytest.raises(CommandError, match=r"superuser.*--include-superusers"):
        call_command("poolactivity", "--cancel", "--pid", str(sleeper.pid), "--yes", stdout=io.StringIO())
    time.sleep(0.5)
    assert sleeper.is_alive() and sleeper.error is None, "a superuser's query was touched without consent"
    assert _admin("SELECT state FROM pg_stat_activity WHERE pid = %s", [sleeper.pid])[0] == "active"
    _run("poolactivity", "--cancel", "--pid", str(sleeper.pid), "--yes", "--include-superusers")
    sleeper.join(10)
    assert isinstance(sleeper.error, psycopg.errors.QueryCanceled)


def test_poolactivity_asks_before_acting(
    make_fleet: Callable[..., Fleet], plain_role: str, sleepers: Callable[..., Sleeper]
) -> None:
    sleeper = sleepers(user=plain_role, application_name="web:default:testhost:4545")
    fleet = make_fleet()
    refused = fleet.manage("poolactivity", "--cancel", "--pid", str(sleeper.pid), stdin="no\n")
    assert refused.returncode != 0 and "aborted" in refused.stderr
    assert "Type 'yes'" in refused.stdout and str(sleeper.pid) in refused.stdout
    assert sleeper.is_alive() and sleeper.error is None
    confirmed = fleet.manage("poolactivity", "--cancel", "--pid", str(sleeper.pid), stdin="yes\n")
    assert confirmed.returncode == 0, confirmed.stderr
    sleeper.join(10)
    assert isinstance(sleeper.error, psycopg.errors.QueryCanceled)


def test_poolactivity_never_lists_or_touches_its_own_session() -> None:
    from django_poolguard.engine.side_connection import side_cursor
    from django_poolguard.fleet.activity import RefusedSession, signal_session

    with side_cursor("default") as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        own_pid = cursor.fetchone()[0]
    listed = json.loads(_run("poolactivity", "--json"))
    assert own_pid not in [s["pid"] for s in listed["sessions"]]
    with pytest.raises(RefusedSession, match="own connection"):
        signal_session("default", own_pid, "terminate", include_superusers=True)


# --- Bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("poolstats", "--alias", "nope"), r"--alias: unknown database alias 'nope'"),
        (("poolstats", "--watch", "0"), r"--watch must be a number of seconds > 0"),
        (("poolstats", "--watch", "-2"), r"--watch must be a number of seconds > 0"),
        (("poolstats", "--watch", "soon"), r"--watch.*invalid float value"),
        (("poolstats", "--watch", "1", "--check"), r"--watch and --check cannot be combined"),
        (("poolactivity", "--alias", "nope"), r"--alias: unknown database alias 'nope'"),
        (("poolactivity", "--older-than", "-5"), r"--older-than must be a number of seconds >= 0"),
        (("poolactivity", "--state", "sleeping"), r"--state.*invalid choice"),
        (("poolactivity", "--terminate", "--yes"), r"--terminate needs at least one of --pid"),
        (("poolactivity", "--cancel", "--terminate", "--pid", "1"), r"--terminate.*not allowed with"),
        (("poolactivity", "--cancel", "--pid", "0"), r"--pid must be a positive backend pid"),
        (("poolactivity", "--cancel", "--pid", "999999999", "--yes"), r"--pid: no session 999999999"),
        (("poolbudget", "--alias", "nope"), r"--alias: unknown database alias 'nope'"),
        (("poolbudget", "--max-connections", "0"), r"--max-connections must be a whole number >= 1"),
        (("poolbudget", "--max-connections", "100", "--superuser-reserved", "-1"), r"--superuser-reserved"),
    ],
)
def test_bad_input_is_a_command_error_naming_the_argument(args: tuple[str, ...], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        call_command(*args, stdout=io.StringIO(), stderr=io.StringIO())


def test_bad_deployment_is_a_command_error(settings: Any) -> None:
    settings.POOLGUARD = {**settings.POOLGUARD, "DEPLOYMENT": {"web": {"instances": "24"}}}
    with pytest.raises(CommandError, match=r"POOLGUARD\['DEPLOYMENT'\]\['web'\]"):
        call_command("poolbudget", "--max-connections", "100", stdout=io.StringIO())


def test_output_never_shows_the_password(settings: Any) -> None:
    password = connections["default"].settings_dict.get("PASSWORD") or ""
    text = _run("poolstats") + _run("poolstats", "--json") + _run("poolbudget") + _run("poolactivity")
    assert "postgresql://" not in text and "password=" not in text.lower()
    if password:
        assert password not in text


def test_leaks_lists_recent_leak_events_with_stacks() -> None:
    from django.utils import timezone

    from django_poolguard.models import LeakEvent

    now = timezone.now()
    LeakEvent.objects.create(
        alias="default",
        workload="web",
        kind="leak",
        context="GET /api/report",
        host="web-1",
        pid=4242,
        thread="worker-3",
        stack="reports/views.py:88 in report\nreports/queries.py:12 in slow_total",
        fingerprint="f" * 40,
        held_seconds=42.0,
        first_seen=now,
        last_seen=now,
        count=7,
    )
    text = _run("poolstats", "--leaks")
    assert "leak on default (web), open, seen 7 times" in text and "GET /api/report" in text
    assert "reports/views.py:88 in report" in text and "reports/queries.py:12 in slow_total" in text
    data = json.loads(_run("poolstats", "--leaks", "--json"))
    assert data["leak_events"][0]["stack"].startswith("reports/views.py:88")


def test_poolactivity_reports_what_postgresql_refuses(
    make_fleet: Callable[..., Fleet], plain_role: str, sleepers: Callable[..., Sleeper]
) -> None:
    """Run as one plain role, cancelling another plain role's query: PostgreSQL says no, and
    the command says so per session instead of crashing."""
    from urllib.parse import urlsplit, urlunsplit

    other = f"{plain_role}_b"
    with psycopg.connect(**connection_params("default")) as connection:
        connection.execute(f'DROP ROLE IF EXISTS "{other}"')
        connection.execute(f'CREATE ROLE "{other}" LOGIN')
    try:
        sleeper = sleepers(user=other, application_name="web:default:testhost:4646")
        parts = urlsplit(os.environ["DATABASE_URL"])
        netloc = f"{plain_role}@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
        fleet = make_fleet(DATABASE_URL=urlunsplit(parts._replace(netloc=netloc)))
        result = fleet.manage("poolactivity", "--cancel", "--pid", str(sleeper.pid), "--yes", "--json")
        assert result.returncode == 0, result.stderr
        [outcome] = json.loads(result.stdout)["results"]
        assert outcome["pid"] == sleeper.pid and not outcome["done"]
        assert outcome["reason"].startswith("PostgreSQL refused")
        assert sleeper.is_alive() and sleeper.error is None
    finally:
        sleeper.stop()
        with psycopg.connect(**connection_params("default")) as connection:
            connection.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [other]
            )
            connection.execute(f'DROP ROLE IF EXISTS "{other}"')


def test_check_is_critical_when_the_database_cannot_be_reached(make_alias: Callable[..., str]) -> None:
    alias = make_alias(pool={"min_size": 0, "max_size": 2, "timeout": 1}, HOST="127.0.0.1", PORT="1")
    code, line = check("--alias", alias)
    assert code == 2 and "database unavailable" in line, line
    text = _run("poolstats", "--alias", alias, "--leaks")
    assert "! database" in text and "! leaks" in text
    assert "Traceback" not in text


def test_poolstats_shows_times_in_the_project_time_zone(settings: Any) -> None:
    """The admin shows TIME_ZONE; poolstats must not say UTC beside it."""
    settings.TIME_ZONE = "America/Chicago"
    out = io.StringIO()
    call_command("poolstats", stdout=out)
    header = out.getvalue().splitlines()[0]
    assert "Poolguard fleet at" in header
    assert "UTC" not in header and ("CST" in header or "CDT" in header), header


def test_longest_sessions_put_an_open_transaction_before_a_long_idle_connection():
    # One age and one order for every view of the sessions: the admin's, poolactivity's and poolstats'.
    from django_poolguard.fleet import activity, collect

    with (
        psycopg.connect(**connection_params("default")) as idle,
        psycopg.connect(**connection_params("default")) as holding,
    ):
        idle.execute("SELECT 1")
        time.sleep(1.5)  # idle for 1.5 s since its last query
        holding.autocommit = False
        holding.execute("SELECT 1")  # a transaction open for a moment: it holds a connection
        sessions = activity.sessions("default")
        pids = [s["pid"] for s in collect.database_side("default", sessions, {
            "max_connections": 100, "superuser_reserved_connections": 3, "server_connections": 0,
        })["longest_sessions"]]  # fmt: skip
        assert pids.index(holding.info.backend_pid) < pids.index(idle.info.backend_pid), pids
        ages = {s["pid"]: activity.session_age(s) for s in sessions}
        assert ages[idle.info.backend_pid] >= 1.5 > ages[holding.info.backend_pid]
        assert activity.matches(
            sessions[[s["pid"] for s in sessions].index(idle.info.backend_pid)], older_than=1.5
        )
