"""The fleet view end to end: real OS processes hold connections and publish their
snapshots; ``poolstats --json`` in yet another process sees each of them, their holders'
stacks and the database's side, and loses a killed one within 3 intervals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.fleet_helpers import INTERVAL, ROOT, Fleet, fleet_env, make_fleet, redis_url

__all__ = ["fleet_env", "make_fleet"]  # fixtures used by this module

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def by_pid(data: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {p["pid"]: p for p in data["processes"]}


def run_fleet_scenario(fleet: Fleet) -> None:
    web1 = fleet.start("web", "default", 2)
    web2 = fleet.start("web", "default", 2)
    worker = fleet.start("worker", "worker", 1)
    for child in (web1, web2, worker):
        fleet.wait_ready(child)

    data = fleet.poolstats()
    processes = by_pid(data)
    assert {web1.pid, web2.pid, worker.pid} <= set(processes), data["processes"]
    for child, role, alias, holds in (
        (web1, "web", "default", 2),
        (web2, "web", "default", 2),
        (worker, "worker", "worker", 1),
    ):
        process = processes[child.pid]
        assert process["role"] == role
        pool = process["aliases"][alias]
        assert pool["in_use"] == holds, json.dumps(process)[:1500]
        assert len(pool["checkouts"]) == holds
        for checkout in pool["checkouts"]:
            # The holder's own frame comes first: that is what tells an engineer where to look.
            assert (
                "fleet_child.py" in checkout["stack"][0] and "hold_report_connection" in checkout["stack"][0]
            )
            assert checkout["thread"].startswith(f"{role}-holder-")
            assert checkout["context"] == (
                f"GET /report/{role}" if role == "web" else "task reports.export[worker]"
            )
    # Totals across processes; the test runner may publish its own default pool too.
    assert data["aliases"]["worker"] == {**data["aliases"]["worker"], "in_use": 1, "processes": 1, "max": 2}
    assert data["aliases"]["default"]["in_use"] >= 4 and data["aliases"]["default"]["processes"] >= 2
    # The database's side: each child's sessions under its application_name.
    sessions: dict[str, int] = {}
    for row in data["database"]["by_application"]:
        sessions[row["application_name"]] = sessions.get(row["application_name"], 0) + row["count"]
    host = processes[web1.pid]["host"]
    assert sessions.get(f"web:default:{host}:{web1.pid}", 0) >= 2
    assert sessions.get(f"web:default:{host}:{web2.pid}", 0) >= 2
    assert sessions.get(f"worker:worker:{host}:{worker.pid}", 0) >= 1
    assert data["database"]["max_connections"] > 0 and data["budget"]["ceiling"] > 0

    # A crashed process (no chance to withdraw) drops out within 3 of its intervals.
    os.kill(web2.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    web2.wait(10)
    time.sleep(max(0.0, killed_at + 3 * INTERVAL + 0.2 - time.monotonic()))
    data = fleet.poolstats()
    assert web2.pid not in by_pid(data)
    assert {web1.pid, worker.pid} <= set(by_pid(data)), "the live processes must stay listed"

    # A process that exits cleanly withdraws at once, without waiting for 3 intervals.
    web1.communicate(input="", timeout=20)
    assert web1.returncode == 0
    data = fleet.poolstats()
    assert web1.pid not in by_pid(data)
    assert worker.pid in by_pid(data)

    # The human-readable table names the same things.
    text = fleet.manage("poolstats").stdout
    assert str(worker.pid) in text and "task reports.export[worker]" in text and "Budget:" in text


@pytest.mark.timing
def test_fleet_published_to_database(make_fleet: Callable[..., Fleet]) -> None:
    run_fleet_scenario(make_fleet(POOLGUARD_FLEET_PUBLISH="database"))


@pytest.mark.timing
def test_fleet_published_to_redis_cache(make_fleet: Callable[..., Fleet]) -> None:
    url = redis_url()
    if url is None:
        pytest.skip(
            "Redis is not reachable at REDIS_URL or 127.0.0.1:6379 (PUBLISH='cache' needs a shared cache)"
        )
    prefix = f"poolguard-test-{uuid.uuid4().hex[:8]}"
    fleet = make_fleet(
        POOLGUARD_FLEET_PUBLISH="cache", POOLGUARD_FLEET_REDIS=url, POOLGUARD_FLEET_PREFIX=prefix
    )
    try:
        run_fleet_scenario(fleet)
    finally:
        fleet.stop_all()
        import redis

        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)


def test_poolbudget_matches_the_seed_incident(make_fleet: Callable[..., Fleet]) -> None:
    """Seed 001: 24 pods x 1 process x max_size 12 against max_connections 300."""
    fleet = make_fleet(
        POOLGUARD_FLEET_MAX_SIZE="12",
        POOLGUARD_FLEET_WORKER="0",
        POOLGUARD_FLEET_DEPLOYMENT=json.dumps({"web": {"instances": 24, "processes": 1}}),
    )
    result = fleet.manage("poolbudget", "--max-connections", "300", "--superuser-reserved", "3", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    ceiling = 300 - 3 - 10  # max_connections - superuser_reserved_connections - RESERVED_CONNECTIONS
    planned = 24 * 1 * (12 + 1)  # the seed's 288 pool connections plus one side connection per pod
    assert (data["ceiling"], data["planned"], data["headroom"]) == (ceiling, planned, ceiling - planned)
    assert data["status"] == "over"
    web = data["workloads"]["web"]
    assert web["safe_max_size"] == ceiling // 24 - 1 == 10
    text = fleet.manage("poolbudget", "--max-connections", "300").stdout
    assert "OVER BUDGET by 25" in text and "287" in text


def _server_max_connections() -> tuple[int, int]:
    import psycopg

    from django_poolguard.engine.side_connection import connection_params

    with psycopg.connect(**connection_params("default")) as connection:
        row = connection.execute(
            "SELECT current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int"
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_budget_system_checks_e001_w001(make_fleet: Callable[..., Fleet]) -> None:
    max_connections, superuser_reserved = _server_max_connections()
    ceiling = max_connections - superuser_reserved - 10
    per_process = 4 + 1  # max_size 4 plus the side connection

    def check(instances: int, *args: str) -> subprocess.CompletedProcess[str]:
        fleet = make_fleet(
            POOLGUARD_FLEET_WORKER="0",
            POOLGUARD_FLEET_DEPLOYMENT=json.dumps({"web": {"instances": instances, "processes": 1}}),
        )
        return fleet.manage("check", *args)

    over = check(ceiling // per_process + 1, "--database", "default")
    assert over.returncode != 0 and "django_poolguard.E001" in over.stderr, over.stderr
    assert f"{ceiling}" in over.stderr
    tight = check(ceiling // per_process, "--database", "default")
    assert "django_poolguard.W001" in tight.stderr and "E001" not in tight.stderr, tight.stderr
    fine = check(1, "--database", "default")
    assert fine.returncode == 0 and "django_poolguard.E001" not in fine.stderr + fine.stdout
    # Without --database the check does not touch the database, as Django's own database checks.
    offline = check(ceiling // per_process + 1)
    assert offline.returncode == 0 and "E001" not in offline.stderr
    deploy = check(ceiling // per_process + 1, "--deploy", "--database", "default")
    assert "django_poolguard.E001" in deploy.stderr


def test_watch_redraws_until_interrupted(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet()
    child = fleet.start("web", "default", 1)
    fleet.wait_ready(child)
    watcher = subprocess.Popen(
        [sys.executable, "-m", "django", "poolstats", "--watch", "0.3", "--json"],
        cwd=ROOT,
        env=fleet.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watcher.stdout is not None
        documents = [json.loads(watcher.stdout.readline()) for _ in range(3)]
        assert all(child.pid in by_pid(d) for d in documents)
        assert len({d["generated_at"] for d in documents}) == 3  # three fresh readings, not one repeated
        watcher.send_signal(signal.SIGINT)
        _, err = watcher.communicate(timeout=20)
        assert watcher.returncode == 0 and "Traceback" not in err, err
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.communicate()
