"""The fleet's connection budget: can every pool of every process, at maximum autoscale,
fit in the server's ``max_connections``?

Pools are configured per process but consumed per server::

    ceiling  = max_connections - superuser_reserved_connections - RESERVED_CONNECTIONS
    planned  = sum over workloads of instances * processes * (max_size + out-of-pool connections)

``instances`` and ``processes`` come from ``POOLGUARD["DEPLOYMENT"]``; ``max_size`` is the
sum of the workload's pooled aliases on that server; each process also opens
:data:`SIDE_CONNECTIONS_PER_PROCESS` connection outside its pools (poolguard's side
connection, for leak events, published snapshots and ``pg_stat_activity``).

:func:`compute` is pure arithmetic (the seed incident: 300 max_connections, 24 pods x 1
process x 12 = 288 + 24 side connections > 287 -> over budget); :func:`for_alias` reads
the server and the settings; the system checks E001/W001 are at the bottom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured

from django_poolguard.conf import (
    AliasConfig,
    is_guarded,
    is_postgresql,
    pool_findings,
    pool_max_size,
    pool_options,
    setting_as_written,
    workloads_opening,
)
from django_poolguard.engine.side_connection import connect
from django_poolguard.fleet.activity import SERVER_LIMITS_SQL, server_settings

SIDE_CONNECTIONS_PER_PROCESS = 1
TIGHT_FRACTION = 0.9  # W001 when the fleet can use more than 90 % of the ceiling
OVER, TIGHT, OK = "over", "tight", "ok"


@dataclass(frozen=True)
class Workload:
    """One workload's share of a server: how many processes, each with which pools."""

    name: str
    instances: int
    processes: int
    pools: dict[str, int]  # alias -> max_size
    declared: bool = True  # False: not in DEPLOYMENT, counted as 1 instance x 1 process
    side_connections: int = SIDE_CONNECTIONS_PER_PROCESS
    #: alias -> its fleet budget: the whole fleet's connections of that alias, whatever the process
    #: count (0 for "auto": it takes what the others leave, so it cannot overrun them).
    budgets: dict[str, int] = field(default_factory=dict)

    @property
    def process_count(self) -> int:
        return self.instances * self.processes

    @property
    def max_size(self) -> int:
        return sum(self.pools.values())

    @property
    def per_process(self) -> int:
        return self.max_size + self.side_connections

    @property
    def connections(self) -> int:
        unbudgeted = sum(size for alias, size in self.pools.items() if alias not in self.budgets)
        return self.process_count * (unbudgeted + self.side_connections) + sum(self.budgets.values())


def compute(
    *,
    max_connections: int,
    superuser_reserved: int,
    reserved: int,
    workloads: list[Workload],
) -> dict[str, Any]:
    """The budget as data (the ``budget`` key of ``poolstats --json``).

    Per workload, ``ceiling`` is what is left for it once the other workloads took their
    share, and ``safe_max_size`` the largest total ``max_size`` per process that fits in it
    (``None`` when not even a pool of 1 fits).
    """
    ceiling = max_connections - superuser_reserved - reserved
    planned = sum(w.connections for w in workloads)
    headroom = ceiling - planned
    if planned > ceiling:
        status = OVER
    elif planned > TIGHT_FRACTION * ceiling:
        status = TIGHT
    else:
        status = OK
    out: dict[str, Any] = {}
    for workload in workloads:
        own_ceiling = ceiling - (planned - workload.connections)
        processes = workload.process_count
        if processes > 0:
            safe = math.floor(own_ceiling / processes) - workload.side_connections
            # The largest max_size that keeps the whole fleet out of W001's last 10 %.
            roomy_share = TIGHT_FRACTION * ceiling - (planned - workload.connections)
            comfortable = math.floor(roomy_share / processes) - workload.side_connections
        else:
            safe = comfortable = own_ceiling
        out[workload.name] = {
            "instances": workload.instances,
            "processes": workload.processes,
            "declared": workload.declared,
            "pools": dict(workload.pools),
            # alias -> fleet_budget (0 for "auto"): counted once for the fleet, not per process
            "budgets": dict(workload.budgets),
            "max_size": workload.max_size,
            "side_connections": workload.side_connections,
            "per_process": workload.per_process,
            "connections": workload.connections,
            "ceiling": own_ceiling,
            "safe_max_size": safe if safe >= 1 else None,
            "comfortable_max_size": comfortable if comfortable >= 1 else None,
        }
    return {
        "max_connections": max_connections,
        "superuser_reserved": superuser_reserved,
        "reserved": reserved,
        "ceiling": ceiling,
        "planned": planned,
        "headroom": headroom,
        "status": status,
        "workloads": out,
    }


# --- From the settings -----------------------------------------------------------------------


def _server(settings_dict: dict[str, Any]) -> tuple[str, str]:
    return (str(settings_dict.get("HOST") or ""), str(settings_dict.get("PORT") or "5432"))


def workloads_for_server(alias: str = "default") -> list[Workload]:
    """The workloads whose pools connect to the same server as ``alias``.

    A workload's processes open the pools of the aliases ``WORKLOADS`` maps it to (the router
    sends them there); an alias no ``WORKLOADS`` entry names counts in its own ``workload``.
    Workloads missing from ``DEPLOYMENT`` count as 1 instance x 1 process and are marked
    ``declared=False``. Raises ``ImproperlyConfigured`` for a bad setting, in its check's words.
    """
    server = _server(settings.DATABASES[alias])
    pools: dict[str, dict[str, int]] = {}
    budgets: dict[str, dict[str, int]] = {}
    for name, settings_dict in settings.DATABASES.items():
        if not is_postgresql(settings_dict) or _server(settings_dict) != server:
            continue
        findings = pool_findings(name, pool_options(settings_dict))
        if findings:
            raise findings[0].error()
        max_size = pool_max_size(settings_dict)
        if max_size is None:
            continue
        config = AliasConfig.from_settings_dict(name, settings_dict)
        # Counted in every workload the router sends to the alias, whatever its label says (E014).
        for workload in workloads_opening(name, config.workload, setting_as_written("WORKLOADS")):
            pools.setdefault(workload, {})[name] = max_size
            if config.fleet_budget is not None and guard_alias(settings_dict):
                budget = config.fleet_budget
                budgets.setdefault(workload, {})[name] = budget if isinstance(budget, int) else 0
    deployment = setting_as_written("DEPLOYMENT")
    out = []
    for workload, sizes in sorted(pools.items()):
        entry = deployment.get(workload)
        if entry is None:
            out.append(Workload(workload, 1, 1, sizes, declared=False, budgets=budgets.get(workload, {})))
            continue
        counts: list[Any] = [
            entry.get(key, 1) if isinstance(entry, dict) else None for key in ("instances", "processes")
        ]
        if any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in counts):
            raise ImproperlyConfigured(
                f"POOLGUARD['DEPLOYMENT'][{workload!r}] is {entry!r}; it must be a dict of whole numbers >= 1, "
                'e.g. {"instances": 24, "processes": 4} (see system check E010).'
            )
        out.append(Workload(workload, counts[0], counts[1], sizes, budgets=budgets.get(workload, {})))
    return out


def guard_alias(settings_dict: dict[str, Any]) -> bool:
    """Only poolguard's engine follows a fleet budget; another engine's pool keeps its max_size."""
    return is_guarded(settings_dict)


def auto_budget(alias: str) -> int:
    """``fleet_budget = "auto"``: what the server leaves ``alias``'s workload, as ``poolbudget``
    computes it (max_connections - superuser-reserved - RESERVED_CONNECTIONS - the other workloads'
    connections - this workload's side connections and other pools); at least 1. Reads the server."""
    from django.db import connections

    data = for_alias(alias)
    workload = AliasConfig.from_settings_dict(alias, connections[alias].settings_dict).workload
    entry = data["workloads"].get(workload)
    if entry is None:
        return max(1, int(data["ceiling"]))
    return max(1, int(entry["ceiling"]) - int(entry["connections"]))


def for_alias(alias: str = "default", *, server: dict[str, int] | None = None) -> dict[str, Any]:
    """The budget of ``alias``'s server. ``server`` (from :func:`activity.server_settings`)
    is read over the side connection when not given; raises ``psycopg.Error``."""
    if server is None:
        server = server_settings(alias)
    data = compute(
        max_connections=server["max_connections"],
        superuser_reserved=server["superuser_reserved_connections"],
        reserved=setting_as_written("RESERVED_CONNECTIONS"),
        workloads=workloads_for_server(alias),
    )
    data["alias"] = alias
    return data


def describe(budget: dict[str, Any]) -> str:
    """One line: ``"287 connections available, the fleet can open 312 (25 over)"``."""
    over = budget["planned"] - budget["ceiling"]
    tail = f"{over} over" if over > 0 else f"{-over} to spare"
    return (
        f"{budget['ceiling']} connections available (max_connections {budget['max_connections']} "
        f"- {budget['superuser_reserved']} superuser-reserved - {budget['reserved']} RESERVED_CONNECTIONS), "
        f"the fleet can open {budget['planned']} ({tail})"
    )


# --- System checks E001 / W001 ---------------------------------------------------------------


def _read_server(alias: str) -> dict[str, int] | None:
    """Server limits over a one-shot connection: checks run in ``migrate`` and friends,
    which should not keep a side connection open afterwards."""
    import psycopg

    try:
        with connect(alias) as connection:
            row = connection.execute(SERVER_LIMITS_SQL).fetchone()
    except psycopg.Error:
        return None  # the database's own checks and the first query will say it is unreachable
    assert row is not None
    return {"max_connections": row[0], "superuser_reserved_connections": row[1], "server_connections": 0}


def _share_text(name: str, w: dict[str, Any]) -> str:
    """``"web: 24 x 1 x (12 + 1) = 312"``; a budgeted alias counts once: ``"web: 120 + 24 x 1 x (0 + 1) = 144"``."""
    budgets = w.get("budgets") or {}
    if not budgets:
        return (
            f"{name}: {w['instances']} x {w['processes']} x ({w['max_size']} + {w['side_connections']})"
            f" = {w['connections']}"
        )
    unbudgeted = sum(size for alias, size in w["pools"].items() if alias not in budgets)
    fleet = " + ".join(f"fleet_budget {b}" if b else "fleet_budget auto" for b in budgets.values())
    return (
        f"{name}: {fleet} + {w['instances']} x {w['processes']} x ({unbudgeted} + {w['side_connections']})"
        f" = {w['connections']}"
    )


def budget_messages(aliases: list[str]) -> list[Any]:
    messages: list[Any] = []
    seen: set[tuple[str, str, str]] = set()
    for alias in aliases:
        settings_dict = settings.DATABASES.get(alias) or {}
        if not is_postgresql(settings_dict):
            continue
        server_key = (*_server(settings_dict), str(settings_dict.get("NAME")))
        if server_key in seen:  # default and worker on one server: one budget
            continue
        seen.add(server_key)
        try:
            if not workloads_for_server(alias):
                continue
            setting_as_written("RESERVED_CONNECTIONS")
        except ImproperlyConfigured:
            continue  # the check of the bad setting (E003, E004, E010...) names it
        server = _read_server(alias)
        if server is None:
            continue
        budget = for_alias(alias, server=server)
        shares = ", ".join(_share_text(name, w) for name, w in budget["workloads"].items())
        safe = ", ".join(
            f"{name} max_size <= {w['safe_max_size']}" for name, w in budget["workloads"].items()
        )
        undeclared = [name for name, w in budget["workloads"].items() if not w["declared"]]
        note = f" (counted as 1 x 1, not in DEPLOYMENT: {', '.join(undeclared)})" if undeclared else ""
        if budget["status"] == OVER:
            messages.append(
                Error(
                    f"DATABASES[{alias!r}]: the fleet can open {budget['planned']} connections, "
                    f"{budget['planned'] - budget['ceiling']} more than the {budget['ceiling']} the server leaves it "
                    f"(max_connections {budget['max_connections']} - {budget['superuser_reserved']} superuser-reserved "
                    f"- {budget['reserved']} RESERVED_CONNECTIONS; {shares}{note}).",
                    hint=f"Lower max_size ({safe}), lower DEPLOYMENT instances/processes, put PgBouncer in front, "
                    "or raise max_connections. `manage.py poolbudget` shows the whole computation.",
                    id="django_poolguard.E001",
                )
            )
        elif budget["status"] == TIGHT:
            comfortable = ", ".join(
                f"{name} max_size <= {w['comfortable_max_size']}" for name, w in budget["workloads"].items()
            )
            messages.append(
                Warning(
                    f"DATABASES[{alias!r}]: the fleet can use {budget['planned']} of the {budget['ceiling']} connections "
                    f"the server leaves it, within 10 % of the limit ({shares}{note}).",
                    hint=f"Keep headroom for deploys and incidents: lower max_size ({comfortable}) or DEPLOYMENT.",
                    id="django_poolguard.W001",
                )
            )
    return messages


@register(Tags.database, "poolguard")
def check_budget(app_configs: Any = None, databases: Any = None, **kwargs: Any) -> list[Any]:
    """E001/W001 for the databases ``check --database`` (also with ``--deploy``) and ``migrate`` name.

    Tagged ``database``: like Django's own database checks it never runs without an alias
    named, so a plain ``check`` or ``runserver`` does not query the server.
    """
    if not databases:
        return []
    return budget_messages([alias for alias in databases if alias in settings.DATABASES])
