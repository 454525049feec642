"""An alias's ``statement_timeout`` and ``idle_in_transaction_timeout``, delivered to its sessions.

``OPTIONS["poolguard"]["timeouts_via"]`` says how:

- ``"startup"`` (default): in the libpq ``options`` startup parameter; PostgreSQL applies them
  before the first query, at no cost. PgBouncer refuses that parameter.
- ``"set"``: one ``SELECT set_config(…)`` per new physical connection (the pool's ``configure``
  step, not per checkout). Session-level, so it survives psycopg_pool's return of the connection.
  Right for PostgreSQL directly and for PgBouncer in session mode; wrong behind transaction
  pooling, where a session ``SET`` lands on whichever server connection ran it: poolguard probes
  for that once per alias and process and logs a warning when it sees it.
- ``"server"``: nothing is sent; the server must apply them (``ALTER ROLE … SET``, a PgBouncer
  ``connect_query``). poolguard reads them back once per physical connection and logs a warning
  when they differ, which is the only way that holds behind transaction pooling.

The database-tagged system check here (E016, W012, W013) reports the same at deploy time.
"""

from __future__ import annotations

import logging
import select
from time import monotonic
from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

from django_poolguard.conf import AliasConfig, alias_findings, is_guarded
from django_poolguard.rules import pg_milliseconds

logger = logging.getLogger("django_poolguard")

PROBE_TIMEOUT = 2  # s: how long the transaction-pooling probe waits to connect, then for a server

# Aliases already warned about in this process: a warning per physical connection would flood
# the log when a pool refills.
_warned: set[str] = set()
# Aliases already probed for transaction pooling: the probe opens one extra connection.
_probed: set[str] = set()
# No lock for either: pool workers racing on a new alias may both probe or both warn, which is
# harmless, and a lock held by a worker thread at fork() would stay locked in the child.


def timeout_settings(config: AliasConfig) -> dict[str, int]:
    """The PostgreSQL settings the alias asks for, in milliseconds."""
    values = {}
    if config.statement_timeout is not None:
        values["statement_timeout"] = pg_milliseconds(config.statement_timeout)
    if config.idle_in_transaction_timeout is not None:
        values["idle_in_transaction_session_timeout"] = pg_milliseconds(config.idle_in_transaction_timeout)
    return values


def configure_session(connection: Any, config: AliasConfig, connect_params: dict[str, Any]) -> bool:
    """Apply or verify the timeouts on a new connection; True when a statement ran (to commit).

    ``connect_params`` are the alias's psycopg arguments, for the transaction-pooling probe, which
    runs once per alias and process (``"set"`` behind a pooler). Problems are logged once.
    """
    values = timeout_settings(config)
    if config.timeouts_via == "startup" or not values:
        return False
    if config.timeouts_via == "set":
        probe = config.alias not in _probed
        _probed.add(config.alias)
        problem = _apply_by_set(connection, config, values, connect_params if probe else None)
    else:
        problem = _verify_on_server(connection, config, values)
    if problem is not None and config.alias not in _warned:
        _warned.add(config.alias)
        logger.warning(problem)
    return True


def _apply_by_set(
    connection: Any, config: AliasConfig, values: dict[str, int], probe_params: dict[str, Any] | None
) -> str | None:
    # One round trip: the settings, and the server's pid to compare with the one the client was
    # given. PgBouncer hands clients its own cancel key, so the two differ behind it.
    calls = ", ".join("set_config(%s, %s, false)" for _ in values)
    params = [item for name, ms in values.items() for item in (name, str(ms))]
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT pg_backend_pid(), {calls}", params)
        server_pid = cursor.fetchone()[0]
    if probe_params is None:
        return None
    return _transaction_pooling_problem(connection, config, server_pid, probe_params)


def _transaction_pooling_problem(
    connection: Any, config: AliasConfig, server_pid: int, probe_params: dict[str, Any]
) -> str | None:
    if server_pid == connection.info.backend_pid:
        return None  # a direct session: a SET is this session's for its whole life
    if not _shares_server_connections(server_pid, probe_params):
        return None
    return (
        f"DATABASES[{config.alias!r}] goes through a connection pooler in transaction (or statement) "
        "mode: another client was just served by the server connection this one used. Timeouts "
        "applied with OPTIONS['poolguard']['timeouts_via'] = 'set' leak to other clients there and are "
        "missing from this client's later transactions. Set them on the server instead (ALTER ROLE "
        "<user> SET statement_timeout = ..., or a PgBouncer database entry with connect_query) and set "
        "timeouts_via to 'server'; 'set' is right only for session pooling."
    )


def _shares_server_connections(server_pid: int, connect_params: dict[str, Any]) -> bool:
    """True when a second client lands on the server connection the first one just released.

    In session mode the first client keeps its server connection until it disconnects, so a second
    client never gets it; in transaction mode PgBouncer lends it the most recently released one, at
    once. A positive answer is proof; a negative one is what session pooling (or a busy pool) shows.
    """
    import psycopg

    params = {**connect_params, "autocommit": True, "connect_timeout": PROBE_TIMEOUT}
    try:
        probe = psycopg.connect(**params)
    except psycopg.Error as exc:
        logger.debug("transaction-pooling probe could not connect: %s", exc)
        return False
    # Not probe.execute(): when every server connection is taken (session mode, a full pool),
    # PgBouncer queues the query for query_wait_timeout (120 s), and this runs in the pool's
    # configure step. No server connection within the timeout is a "no" anyway. Closed, not left
    # through "with", which would talk to a connection still waiting for its answer.
    try:
        pgconn = probe.pgconn
        pgconn.send_query(b"SELECT pg_backend_pid()")
        deadline = monotonic() + PROBE_TIMEOUT
        while pgconn.is_busy():
            remaining = deadline - monotonic()
            if remaining <= 0 or not select.select([pgconn.socket], [], [], remaining)[0]:
                return False
            pgconn.consume_input()
        result = pgconn.get_result()
    except psycopg.Error as exc:
        logger.debug("transaction-pooling probe failed: %s", exc)
        return False
    finally:
        probe.close()
    if result is None or result.status != psycopg.pq.ExecStatus.TUPLES_OK or not result.ntuples:
        return False
    value = result.get_value(0, 0)
    return value is not None and int(value) == server_pid


def _verify_on_server(connection: Any, config: AliasConfig, values: dict[str, int]) -> str | None:
    with connection.cursor() as cursor:
        # pg_settings.setting is in the setting's unit: milliseconds for both.
        cursor.execute("SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", [list(values)])
        actual = {name: int(setting) for name, setting in cursor.fetchall()}
    wrong = {name: ms for name, ms in values.items() if actual.get(name) != ms}
    if not wrong:
        return None
    found = ", ".join(f"{name} = {actual.get(name)} ms (expected {ms} ms)" for name, ms in wrong.items())
    fixes = "; ".join(f"ALTER ROLE <user> SET {name} = '{ms}ms'" for name, ms in wrong.items())
    return (
        f"DATABASES[{config.alias!r}] has OPTIONS['poolguard']['timeouts_via'] = 'server', but the server "
        f"did not apply the timeouts: {found}. Set them on the server ({fixes}; or a PgBouncer database "
        "entry with connect_query), or use timeouts_via 'startup' (direct to PostgreSQL) or 'set' "
        "(session pooling)."
    )


@register(Tags.database, "poolguard")
def check_session_timeouts(app_configs: Any = None, databases: Any = None, **kwargs: Any) -> list[Any]:
    """E016/W012/W013: the timeouts reach the server the way ``timeouts_via`` says.

    Tagged ``database`` (``check --database``, ``migrate``): it opens one connection per alias,
    and for ``"set"`` a second one to probe for transaction pooling. It runs no ``SET``, so it
    leaves nothing behind on a pooler's server connections.
    """
    import psycopg
    from django.db import connections

    messages: list[Any] = []
    for alias in databases or ():
        if not is_guarded(settings.DATABASES.get(alias) or {}):
            continue
        wrapper = connections[alias]
        if alias_findings(alias, wrapper.settings_dict):
            continue  # the settings checks already name the bad value
        config = AliasConfig.from_settings_dict(alias, wrapper.settings_dict)
        if not timeout_settings(config):
            continue  # nothing to deliver
        params = {
            **wrapper.get_connection_params(),
            "autocommit": True,
            "connect_timeout": CHECK_CONNECT_TIMEOUT,
        }
        try:
            with psycopg.connect(**params) as connection:
                if config.timeouts_via == "set":
                    [server_pid] = connection.execute("SELECT pg_backend_pid()").fetchone() or (0,)
                    problem = _transaction_pooling_problem(connection, config, server_pid, params)
                    check_id = "django_poolguard.W012"
                elif config.timeouts_via == "server":
                    problem = _verify_on_server(connection, config, timeout_settings(config))
                    check_id = "django_poolguard.W013"
                else:
                    problem = None
        except psycopg.OperationalError as exc:
            # Anything else (server down, bad password) is the budget check's and the pool's to report.
            if config.timeouts_via == "startup" and "unsupported startup parameter" in str(exc):
                messages.append(
                    Error(
                        f"DATABASES[{alias!r}] sends its timeouts in the 'options' startup parameter "
                        "(OPTIONS['poolguard']['timeouts_via'] = 'startup') and the server refused it with "
                        "'unsupported startup parameter', as PgBouncer does: every connection fails.",
                        hint="Behind PgBouncer set timeouts_via to 'set' (pool_mode = session) or to 'server' "
                        "with the timeouts on the role or in connect_query (pool_mode = transaction).",
                        id="django_poolguard.E016",
                    )
                )
            continue
        if problem is not None:
            messages.append(Warning(problem, hint=CHECK_HINTS[check_id], id=check_id))
    return messages


CHECK_CONNECT_TIMEOUT = 5  # s: a check must not hang a deploy on an unreachable server
CHECK_HINTS = {
    "django_poolguard.W012": "Use timeouts_via 'server' with the timeouts on the role or in PgBouncer's "
    "connect_query, or switch that PgBouncer database to pool_mode = session.",
    "django_poolguard.W013": "ALTER ROLE <user> SET statement_timeout = '...'; or add connect_query to the "
    "PgBouncer database entry; then reconnect (PgBouncer: RECONNECT on its console).",
}
