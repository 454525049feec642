"""tests/benchmarks/bench_fleet_budget.py in a tiny configuration (2 -> 4 -> 2 processes, 4 s
phases), so the replay cannot rot: it runs, prints a row per configuration and phase, the
budgeted configuration never goes over its budget, and the role it created is gone afterwards.
The figures themselves are recorded in docs/benchmarks/fleet-budget.md."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from django_poolguard.testing import database_settings

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "tests" / "benchmarks" / "bench_fleet_budget.py"
CONFIGS = {
    "native": "Django's pool",
    "static": "poolguard, static",
    "fleet": "poolguard, fleet_budget (database store)",
}


def table(output: str) -> list[list[str]]:
    lines = [line for line in output.splitlines() if line.startswith("| ") and "---" not in line]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


def test_tiny_replay_runs_stays_in_budget_and_drops_its_role() -> None:
    role = f"poolguard_bench_budget_{os.getpid()}"
    command = [sys.executable, str(BENCH), "--configs", ",".join(CONFIGS), "--processes", "2,4,2"]
    command += ["--phase", "4", "--max-size", "2", "--threads", "2", "--heartbeat", "1", "--role", role]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]

    rows = table(result.stdout)
    assert [(row[0], row[1]) for row in rows] == [
        (label, processes) for label in CONFIGS.values() for processes in ("2", "→ 4", "→ 2")
    ], result.stdout
    for row in rows:
        if row[0] == CONFIGS["fleet"]:
            assert row[5].startswith("0 of "), f"over the budget: {row}"
            assert row[6] == "0", f"refused connections: {row}"
    scale_in = rows[-1]
    assert "regrown" in scale_in[10] or "never shrank" in scale_in[10], scale_in

    settings = database_settings("postgres")
    with psycopg.connect(
        dbname="postgres",
        user=settings["USER"] or None,
        host=settings["HOST"] or None,
        port=settings["PORT"] or None,
    ) as admin:
        assert admin.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", [role]).fetchone() == (0,)
        assert admin.execute("SELECT count(*) FROM pg_database WHERE datname = %s", [role]).fetchone() == (0,)
