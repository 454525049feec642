"""``python3 tests/run.py``, the README's test command: tox in its own virtual environment (so it
works where pip installs are refused), and a closing summary of what the run skipped."""

from __future__ import annotations

import os
import subprocess
import sysconfig
from pathlib import Path

import pytest

from tests import run

REPO = Path(__file__).resolve().parent.parent

TOX_OUTPUT = """\
py311-django52: commands[0]> pytest
SKIPPED [1] tests/web/test_admin_browser.py:45: no Chromium at /nonexistent/chromium: `apt-get install -y chromium`
SKIPPED [2] tests/integrations/test_pgbouncer.py:106: needs Debian's pgbouncer (apt-get install pgbouncer)
================== 219 passed, 3 skipped in 267.84s (0:04:27) ==================
  py311-django52: OK (283.80=setup[14.00]+cmd[0.04,269.76] seconds)
  py313-django61: SKIP (0.01 seconds)
  congratulations :) (283.85 seconds)
"""


def test_summary_names_skipped_environments_missing_programs_and_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POOLGUARD_CHROMIUM", "/nonexistent/chromium")
    outcome = run.parse(TOX_OUTPUT.splitlines())
    assert outcome.environments == {"py311-django52": "OK", "py313-django61": "SKIP"}
    assert outcome.passed == 219
    text = run.summary(outcome, 290.0, 0)
    assert "4.8 min" in text
    assert "SKIPPED  py313-django61: no python3.13 on PATH" in text
    assert "tests/web/test_admin_browser.py" in text and "no chromium" in text
    assert "apt-get install chromium" in text
    assert "did NOT test everything" in text
    # A run without skips says nothing alarming.
    monkeypatch.setattr(run, "REAL_PARTS", ())
    clean = run.summary(run.parse(TOX_OUTPUT.replace("  py313-django61: SKIP", "").splitlines()), 10.0, 0)
    assert "did NOT" not in clean and "ran      py311-django52: OK" in clean


def _externally_managed_python() -> str | None:
    """An interpreter (3.11+) that refuses pip installs, as Debian's and Ubuntu's python3 do."""
    probe = (
        "import os, sys, sysconfig; "
        "print(sys.version_info >= (3, 11) and sys.prefix == sys.base_prefix and "
        "os.path.exists(os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')))"
    )
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            done = subprocess.run([candidate, "-c", probe], capture_output=True, text=True)
            if done.stdout.strip() == "True":
                return candidate
    return None


@pytest.mark.slow
def test_runs_tox_from_an_interpreter_that_refuses_pip_installs(tmp_path: Path) -> None:
    python = _externally_managed_python()
    if python is None:
        pytest.skip(
            "no externally-managed python3 (Debian/Ubuntu's /usr/bin/python3 with its EXTERNALLY-MANAGED "
            f"marker); this one's stdlib is {sysconfig.get_path('stdlib')}"
        )
    refused = subprocess.run(
        [python, "-m", "pip", "install", "--dry-run", "tox"], capture_output=True, text=True
    )
    assert refused.returncode != 0 and "externally-managed-environment" in refused.stderr, refused
    env = {**os.environ, "POOLGUARD_TOX_VENV": str(tmp_path / "venv-tox")}
    done = subprocess.run(
        [python, str(REPO / "tests" / "run.py"), "--version"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "tox" in done.stdout and "from " + str(tmp_path / "venv-tox") in done.stdout, done.stdout
    # The interpreter itself is untouched: still no tox in it.
    assert subprocess.run([python, "-c", "import tox"], capture_output=True).returncode != 0
