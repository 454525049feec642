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
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from .conf import AliasConfig

logger = logging.getLogger("django_poolguard")

TIMEOUTS_VIA = ("startup", "set", "server")

# (alias, kind) already warned about in this process: a warning per physical connection would
# flood the log when a pool refills.
_warned: set[tuple[str, str]] = set()
# Aliases already probed for transaction pooling: the probe opens one extra connection.
_probed: set[str] = set()
# Guards _warned and _probed: the pool's worker threads configure connections concurrently.
_lock = threading.Lock()


def timeout_settings(config: AliasConfig) -> dict[str, int]:
    """The PostgreSQL settings the alias asks for, in milliseconds."""
    values = {}
    if config.statement_timeout is not None:
        values["statement_timeout"] = int(float(config.statement_timeout) * 1000)
    if config.idle_in_transaction_timeout is not None:
        values["idle_in_transaction_session_timeout"] = int(float(config.idle_in_transaction_timeout) * 1000)
    return values


def configure_session(connection: Any, config: AliasConfig, connect_params: dict[str, Any]) -> bool:
    """Apply or verify the timeouts on a new connection; True when a statement ran (to commit).

    ``connect_params`` are the psycopg arguments of the alias, for the one transaction-pooling
    probe (``"set"`` behind a pooler).
    """
    values = timeout_settings(config)
    if config.timeouts_via == "startup" or not values:
        return False
    if config.timeouts_via == "set":
        _apply_by_set(connection, config, values, connect_params)
    else:
        _verify_on_server(connection, config, values)
    return True


def _apply_by_set(
    connection: Any, config: AliasConfig, values: dict[str, int], connect_params: dict[str, Any]
) -> None:
    # One round trip: the settings, and the server's pid to compare with the one the client was
    # given. PgBouncer hands clients its own cancel key, so the two differ behind it.
    calls = ", ".join("set_config(%s, %s, false)" for _ in values)
    params = [item for name, ms in values.items() for item in (name, str(ms))]
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT pg_backend_pid(), {calls}", params)
        server_pid = cursor.fetchone()[0]
    if server_pid == connection.info.backend_pid:
        return  # a direct session: the SET is this session's for its whole life
    with _lock:
        if config.alias in _probed:
            return
        _probed.add(config.alias)
    if _shares_server_connections(server_pid, connect_params):
        _warn_once(
            config.alias,
            "set",
            f"DATABASES[{config.alias!r}] goes through a connection pooler in transaction (or statement) "
            "mode: another client was just served by the server connection this one ran "
            "`SET statement_timeout` on. Timeouts applied with OPTIONS['poolguard']['timeouts_via'] = 'set' "
            "leak to other clients there and are missing from this client's later transactions. Set them "
            "on the server instead (ALTER ROLE <user> SET statement_timeout = ..., or a PgBouncer "
            "database entry with connect_query) and set timeouts_via to 'server'; 'set' is right only "
            "for session pooling.",
        )


def _shares_server_connections(server_pid: int, connect_params: dict[str, Any]) -> bool:
    """True when a second client lands on the server connection the first one just released.

    In session mode the first client keeps its server connection until it disconnects, so a second
    client never gets it; in transaction mode PgBouncer reuses the most recently released one.
    A positive answer is proof; a negative one is what session pooling (or a busy pool) shows.
    """
    import psycopg

    params = {**connect_params, "autocommit": True}
    try:
        with psycopg.connect(**params) as probe:
            row = probe.execute("SELECT pg_backend_pid()").fetchone()
    except psycopg.Error as exc:
        logger.debug("transaction-pooling probe failed: %s", exc)
        return False
    return row is not None and row[0] == server_pid


def _verify_on_server(connection: Any, config: AliasConfig, values: dict[str, int]) -> None:
    with connection.cursor() as cursor:
        # pg_settings.setting is in the setting's unit: milliseconds for both.
        cursor.execute("SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", [list(values)])
        actual = {name: int(setting) for name, setting in cursor.fetchall()}
    wrong = {name: ms for name, ms in values.items() if actual.get(name) != ms}
    if not wrong:
        return
    found = ", ".join(f"{name} = {actual.get(name)} ms (expected {ms} ms)" for name, ms in wrong.items())
    fixes = "; ".join(f"ALTER ROLE <user> SET {name} = '{ms}ms'" for name, ms in wrong.items())
    _warn_once(
        config.alias,
        "server",
        f"DATABASES[{config.alias!r}] has OPTIONS['poolguard']['timeouts_via'] = 'server', but the server "
        f"did not apply the timeouts: {found}. Set them on the server ({fixes}; or a PgBouncer database "
        "entry with connect_query), or use timeouts_via 'startup' (direct to PostgreSQL) or 'set' "
        "(session pooling).",
    )


def _warn_once(alias: str, kind: str, message: str) -> None:
    with _lock:
        if (alias, kind) in _warned:
            return
        _warned.add((alias, kind))
    logger.warning(message)
