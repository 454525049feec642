"""Helpers for tests that run a fleet of real processes (``tests.fleet_child``) and
management commands beside them, all on the test database."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connections

ROOT = Path(__file__).resolve().parent.parent
INTERVAL = 1.0  # PUBLISH_INTERVAL of the children: small, so a dead one drops out fast


def redis_url() -> str | None:
    """``REDIS_URL`` (default redis://127.0.0.1:6379/0) when something answers there."""
    from urllib.parse import urlsplit

    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=0.5):
            return url
    except OSError:
        return None


class Fleet:
    """Child processes of ``tests.fleet_child`` and commands run beside them."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.children: list[subprocess.Popen[str]] = []

    def start(self, role: str, alias: str, holds: int) -> subprocess.Popen[str]:
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.fleet_child", role, alias, str(holds)],
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.children.append(child)
        return child

    def wait_ready(self, child: subprocess.Popen[str]) -> None:
        assert child.stdout is not None
        line = child.stdout.readline()
        if line.strip() != "ready":
            child.kill()
            _, err = child.communicate(timeout=10)
            pytest.fail(f"fleet child {child.args} did not start: {line!r} {err[-2000:]}")

    def manage(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "django", *args],
            cwd=ROOT,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def poolstats(self, *args: str) -> dict[str, Any]:
        result = self.manage("poolstats", "--json", *args)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def stop_all(self) -> None:
        for child in self.children:
            if child.poll() is None:
                try:
                    child.communicate(input="", timeout=10)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.communicate()


@pytest.fixture
def fleet_env(django_db_setup: Any) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.fleet_settings",
        PYTHONPATH=str(ROOT),
        POOLGUARD_FLEET_DB=connections["default"].settings_dict["NAME"],
        POOLGUARD_FLEET_INTERVAL=str(INTERVAL),
    )
    return env


@pytest.fixture
def make_fleet(fleet_env: dict[str, str]) -> Iterator[Callable[..., Fleet]]:
    fleets: list[Fleet] = []

    def make(**env: str) -> Fleet:
        fleet = Fleet({**fleet_env, **env})
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        fleet.stop_all()
