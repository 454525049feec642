"""What Debian's PgBouncer does with poolguard's startup parameters (docs/pgbouncer.md).

poolguard sends ``application_name`` and, for an alias with timeouts, libpq ``options`` with
``-c statement_timeout=…``. PgBouncer refuses ``options`` unless told to ignore it, and then drops
the timeouts silently. Skipped when the ``pgbouncer`` binary is missing.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from django.db import OperationalError, connections

from django_poolguard.engine.session_timeouts import check_session_timeouts

PGBOUNCER = shutil.which("pgbouncer") or (
    "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(PGBOUNCER is None, reason="needs Debian's pgbouncer (apt-get install pgbouncer)"),
    pytest.mark.django_db(transaction=True),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as() -> str | None:
    """PgBouncer refuses to run as root: run it as ``postgres`` (or ``nobody``) then."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    pytest.skip("running as root and no 'postgres' or 'nobody' user to run PgBouncer as")


@pytest.fixture
def pgbouncer():
    """``start(extra_settings, pool_mode=..., database_extra=...)`` runs PgBouncer (transaction mode
    unless told otherwise) in front of the test database; ``database_extra`` is appended to its
    ``[databases]`` entry (e.g. a ``connect_query``)."""
    processes: list[subprocess.Popen[bytes]] = []
    # Not pytest's tmp_path: under root it sits in a 0700 directory the PgBouncer user cannot enter.
    tmp_path = Path(tempfile.mkdtemp(prefix="poolguard-pgbouncer-"))

    def start(
        extra: str = "", *, pool_mode: str = "transaction", database_extra: str = ""
    ) -> tuple[int, Path]:
        db = connections["default"].settings_dict
        host = db["HOST"] or "127.0.0.1"
        port = _free_port()
        target = f"host={host} port={db['PORT'] or 5432} dbname={db['NAME']}"
        log = tmp_path / "pgbouncer.log"
        (tmp_path / "users.txt").write_text(f'"{db["USER"]}" "{db["PASSWORD"] or ""}"\n')
        ini = tmp_path / "pgbouncer.ini"
        ini.write_text(
            f"[databases]\n{db['NAME']} = {target} {database_extra}\n\n[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {tmp_path / 'users.txt'}\npool_mode = {pool_mode}\n"
            f"default_pool_size = 2\nlogfile = {log}\n{extra}\n"
        )
        user = _run_as()
        if user:
            shutil.chown(tmp_path, user)
            for path in tmp_path.iterdir():
                shutil.chown(path, user)
        process = subprocess.Popen([str(PGBOUNCER), str(ini)], user=user, stderr=subprocess.DEVNULL)
        processes.append(process)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return port, log
            except OSError:
                assert process.poll() is None, f"pgbouncer exited: {log.read_text() if log.exists() else ''}"
                time.sleep(0.1)
        pytest.fail("pgbouncer did not start listening within 10 s")

    yield start
    for process in processes:
        process.terminate()
        process.wait(10)
    shutil.rmtree(tmp_path, ignore_errors=True)


def _alias_through(make_alias, port: int, **poolguard) -> str:
    return make_alias(
        pool={"min_size": 0, "max_size": 1, "timeout": 2},
        poolguard={"statement_timeout": 2, "idle_in_transaction_timeout": 30, **poolguard},
        HOST="127.0.0.1",
        PORT=str(port),
    )


def _session_timeouts(alias: str) -> tuple[str, str]:
    with connections[alias].cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        [statement_timeout] = cursor.fetchone()
        cursor.execute("SHOW idle_in_transaction_session_timeout")
        [idle_timeout] = cursor.fetchone()
    connections[alias].close()
    return statement_timeout, idle_timeout


def _warnings(caplog) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "django_poolguard" and r.levelname == "WARNING"
    ]


def test_pgbouncer_refuses_the_options_startup_parameter(make_alias, pgbouncer) -> None:
    port, log = pgbouncer()
    alias = _alias_through(make_alias, port)
    with pytest.raises(OperationalError, match="failed connection attempts"):
        connections[alias].ensure_connection()
    assert "unsupported startup parameter: options" in log.read_text()
    [error] = check_session_timeouts(databases=[alias])
    assert error.id == "django_poolguard.E016"
    assert f"DATABASES[{alias!r}] sends its timeouts in the 'options' startup parameter" in error.msg
    assert "timeouts_via to 'set' (pool_mode = session) or to 'server'" in error.hint


def test_ignoring_options_drops_the_timeouts_silently(make_alias, pgbouncer) -> None:
    port, _ = pgbouncer("ignore_startup_parameters = options")
    alias = _alias_through(make_alias, port)
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT current_setting('statement_timeout'), current_setting('application_name')")
        statement_timeout, application_name = cursor.fetchone()
    connections[alias].close()
    assert statement_timeout == "0"  # the 2 s asked for never reached PostgreSQL
    assert application_name.startswith(f"{alias}:{alias}:")  # application_name does get through


def test_timeouts_by_set_connect_through_transaction_pooling_and_warn(make_alias, pgbouncer, caplog) -> None:
    port, log = pgbouncer()
    alias = _alias_through(make_alias, port, timeouts_via="set")
    assert _session_timeouts(alias) == ("2s", "30s")
    assert "unsupported startup parameter" not in log.read_text()
    [warning] = _warnings(caplog)
    assert (
        f"DATABASES[{alias!r}] goes through a connection pooler in transaction (or statement) mode" in warning
    )
    assert "timeouts_via to 'server'" in warning
    [message] = check_session_timeouts(databases=[alias])
    assert message.id == "django_poolguard.W012"


def test_a_session_set_behind_transaction_pooling_reaches_other_clients(make_alias, pgbouncer) -> None:
    """Why 'set' warns in transaction mode: PgBouncer lends the server connection that ran the SET
    to the next client, which never asked for it."""
    import psycopg

    port, _ = pgbouncer()
    alias = _alias_through(make_alias, port, timeouts_via="set")
    connections[alias].ensure_connection()  # the pool's new connection runs the SET, then idles
    db = connections["default"].settings_dict
    with psycopg.connect(
        host="127.0.0.1", port=port, dbname=db["NAME"], user=db["USER"], password=db["PASSWORD"] or None
    ) as other:
        [leaked] = other.execute("SHOW statement_timeout").fetchone() or ("",)
    connections[alias].close()
    assert leaked == "2s"


def test_timeouts_by_set_hold_in_session_pooling_without_a_warning(make_alias, pgbouncer, caplog) -> None:
    port, log = pgbouncer(pool_mode="session")
    alias = _alias_through(make_alias, port, timeouts_via="set")
    for _ in range(3):  # checked out and returned: the session keeps them
        assert _session_timeouts(alias) == ("2s", "30s")
    assert "unsupported startup parameter" not in log.read_text()
    assert _warnings(caplog) == []
    assert check_session_timeouts(databases=[alias]) == []


def test_timeouts_from_the_server_are_verified_quietly(make_alias, pgbouncer, caplog) -> None:
    port, _ = pgbouncer(
        database_extra="connect_query='SET statement_timeout = 2000; SET idle_in_transaction_session_timeout = 30000'"
    )
    alias = _alias_through(make_alias, port, timeouts_via="server")
    assert _session_timeouts(alias) == ("2s", "30s")
    assert _warnings(caplog) == []
    assert check_session_timeouts(databases=[alias]) == []


def test_timeouts_the_server_does_not_apply_are_reported(make_alias, pgbouncer, caplog) -> None:
    port, _ = pgbouncer(database_extra="connect_query='SET statement_timeout = 2000'")
    alias = _alias_through(make_alias, port, timeouts_via="server")
    assert _session_timeouts(alias) == ("2s", "0")  # connections work: the check only reports
    [warning] = _warnings(caplog)
    assert f"DATABASES[{alias!r}] has OPTIONS['poolguard']['timeouts_via'] = 'server'" in warning
    assert "idle_in_transaction_session_timeout = 0 ms (expected 30000 ms)" in warning
    assert "statement_timeout = 0" not in warning
    assert "ALTER ROLE <user> SET idle_in_transaction_session_timeout = '30000ms'" in warning
    [message] = check_session_timeouts(databases=[alias])
    assert (message.id, message.msg) == ("django_poolguard.W013", warning)


@pytest.mark.parametrize("timeouts_via", ["set", "server"])
def test_poolguards_own_connection_goes_through_pgbouncer_too(make_alias, pgbouncer, timeouts_via) -> None:
    from django_poolguard.engine import side_connection

    port, _ = pgbouncer(pool_mode="session")
    alias = _alias_through(make_alias, port, timeouts_via=timeouts_via)
    try:
        with side_connection.side_cursor(alias) as cursor:
            cursor.execute("SHOW statement_timeout")
            [statement_timeout] = cursor.fetchone()
    finally:
        side_connection.close_all()
    assert statement_timeout == ("5s" if timeouts_via == "set" else "0")
