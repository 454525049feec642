"""The example shop: the demo starts everything and Ctrl-C stops everything; the incident replays
name their culprit. Slow: real gunicorn, a real Celery worker, real PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

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
    native, guarded = json.loads(done.stdout[done.stdout.find("[") :])
    return {"native": native, "guarded": guarded}


LEAK_THRESHOLD = 5  # the shop's web alias
ANALYTICS_LEAK_THRESHOLD = 10  # the shop's analytics alias, where the report runs


def test_leak_incident_names_the_leaking_code_and_keeps_answering(shop_env) -> None:
    runs = _incident("leak", shop_env)
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
