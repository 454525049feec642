#!/usr/bin/env python3
"""Run the test suite on this machine: ``python3 tests/run.py``.

Needs only Python 3.11+ on PATH. tox is installed into ``.venv-tox/`` at the repository root (its
own virtual environment, ignored by git), never into the interpreter that runs this script, so it
works where ``pip install`` is refused (Debian's and Ubuntu's ``externally-managed-environment``).
Arguments go to tox (``python3 tests/run.py -e lint``); ``--quick`` runs the fast tests on one
environment. The run ends with a summary of what ran and what was skipped, and how to get the rest.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import venv
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOX_VENV = Path(os.environ.get("POOLGUARD_TOX_VENV", REPO / ".venv-tox"))
TOX_REQUIREMENT = "tox>=4.20"
# `--quick`: the first of these environments whose Python is on PATH, without the slow tests.
QUICK_ENVS = {"py311-django52": "3.11", "py312-django61": "3.12", "py313-django61": "3.13"}
QUICK_MARKERS = "not slow"


@dataclass(frozen=True)
class RealPart:
    """A program some tests drive for real and skip without (see their skip conditions)."""

    name: str
    debian_package: str
    tests: str

    def present(self) -> bool:
        return locate(self.name) is not None


REAL_PARTS = (
    RealPart("chromium", "chromium", "tests/web/test_admin_browser.py (the dashboard in a real browser)"),
    RealPart("promtool", "prometheus", "tests/integrations/test_alert_rules.py (the shipped alert rules)"),
    RealPart("pgbouncer", "pgbouncer", "tests/integrations/test_pgbouncer.py (poolguard behind PgBouncer)"),
)


def locate(program: str) -> str | None:
    """Where the tests find ``program``: the environment's override, PATH, then Debian's path."""
    if program == "chromium":
        configured = os.environ.get("POOLGUARD_CHROMIUM") or os.environ.get("CHROMIUM") or "/usr/bin/chromium"
        return configured if (os.path.exists(configured) or shutil.which(configured)) else None
    # Debian puts pgbouncer in /usr/sbin, which an ordinary user's PATH lacks.
    return shutil.which(program) or (
        f"/usr/sbin/{program}" if os.access(f"/usr/sbin/{program}", os.X_OK) else None
    )


@dataclass
class Outcome:
    """What a tox run printed, read back for the summary."""

    environments: dict[str, str] = field(default_factory=dict)  # name -> "OK", "FAIL code 1", "SKIP"
    skipped_tests: dict[str, int] = field(default_factory=dict)  # reason -> count
    passed: int = 0
    failed: int = 0


ENV_RESULT = re.compile(r"^\s*([\w.-]+): (OK|SKIP|FAIL[^(]*?)\s*\(")
SKIPPED = re.compile(r"^SKIPPED \[(\d+)\] [^:]+:\d+: (.*)$")
COUNTS = re.compile(r"(\d+) (passed|failed|error)")


def parse(lines: Iterable[str]) -> Outcome:
    outcome = Outcome()
    for line in lines:
        if match := ENV_RESULT.match(line):
            outcome.environments[match[1]] = match[2].strip()
        elif match := SKIPPED.match(line.strip()):
            reason = match[2].strip()
            outcome.skipped_tests[reason] = outcome.skipped_tests.get(reason, 0) + int(match[1])
        elif line.startswith("=") and (" passed" in line or " failed" in line) and " in " in line:
            for count, kind in COUNTS.findall(line):
                if kind == "passed":
                    outcome.passed += int(count)
                else:
                    outcome.failed += int(count)
    return outcome


def summary(outcome: Outcome, seconds: float, returncode: int) -> str:
    """The closing lines a newcomer cannot miss: what ran, what was skipped, how to get the rest."""
    bar = "=" * 78
    ran = {name: result for name, result in outcome.environments.items() if result != "SKIP"}
    skipped = [name for name, result in outcome.environments.items() if result == "SKIP"]
    lines = [
        "",
        bar,
        f"Test run {'PASSED' if returncode == 0 else 'FAILED'} in {seconds / 60:.1f} min "
        f"({outcome.passed} tests passed, {outcome.failed} failed, "
        f"{sum(outcome.skipped_tests.values())} skipped)",
    ]
    for name, result in ran.items():
        lines.append(f"  ran      {name}: {result}")
    for name in skipped:
        version = re.match(r"py(\d)(\d+)", name)
        if version:
            wanted = f"{version[1]}.{version[2]}"
            lines.append(
                f"  SKIPPED  {name}: no python{wanted} on PATH (e.g. `pyenv install {wanted}`, or your "
                f"distribution's python{wanted})"
            )
        else:
            lines.append(f"  SKIPPED  {name}: its interpreter is not on PATH")
    tests_ran = outcome.passed + outcome.failed > 0
    missing = [part for part in REAL_PARTS if tests_ran and not part.present()]
    for part in missing:
        lines.append(f"  SKIPPED  {part.tests}: no {part.name}")
    for reason, count in outcome.skipped_tests.items():
        if not any(part.name in reason.lower() for part in missing):
            lines.append(f"  skipped  {count} test(s): {reason}")
    if missing:
        packages = " ".join(part.debian_package for part in missing)
        lines.append(f"  To run them all (Debian/Ubuntu, as root): apt-get install {packages}")
    if skipped or missing:
        lines.append("  This run did NOT test everything: see the SKIPPED lines above.")
    lines.append(bar)
    return "\n".join(lines)


def tox_python() -> Path:
    return TOX_VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_tox() -> None:
    """tox in its own virtual environment: the interpreter running this script stays untouched."""
    if not tox_python().exists():
        print(f"Creating {TOX_VENV} for tox (once) ...", flush=True)
        try:
            venv.create(TOX_VENV, with_pip=True)
        except Exception as exc:  # Debian's python3 without python3-venv lands here
            shutil.rmtree(TOX_VENV, ignore_errors=True)
            sys.exit(
                f"Could not create {TOX_VENV} ({exc}). Install the venv module "
                "(Debian/Ubuntu: apt-get install python3-venv) and run this again."
            )
    has_tox = subprocess.run([str(tox_python()), "-c", "import tox"], capture_output=True).returncode == 0
    if not has_tox:
        print(f"Installing {TOX_REQUIREMENT} into {TOX_VENV} ...", flush=True)
        subprocess.run(
            [
                str(tox_python()),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                TOX_REQUIREMENT,
            ],
            check=True,
        )


def quick_arguments() -> list[str]:
    for env, version in QUICK_ENVS.items():
        if shutil.which(f"python{version}"):
            return ["-e", env, "--", "-m", QUICK_MARKERS]
    sys.exit(f"--quick needs one of Python {', '.join(QUICK_ENVS.values())} on PATH.")


def main(argv: list[str]) -> int:
    if sys.version_info < (3, 11):  # noqa: UP036 - this script may be started by any python3
        sys.exit(f"The tests need Python 3.11 or newer; this is {sys.version.split()[0]}.")
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    arguments = quick_arguments() + argv[1:] if argv[:1] == ["--quick"] else argv
    ensure_tox()
    command = [str(tox_python()), "-m", "tox", *arguments]
    print("Running:", " ".join(command), flush=True)
    started = time.monotonic()
    output: list[str] = []
    with subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as tox:
        assert tox.stdout is not None
        try:
            for line in tox.stdout:
                sys.stdout.write(line)
                output.append(line)
        except KeyboardInterrupt:
            tox.wait()
            raise
    returncode = tox.returncode
    if not arguments or arguments[0] not in ("--version", "--help", "-h", "list", "l", "--listenvs"):
        print(summary(parse(output), time.monotonic() - started, returncode), flush=True)
    return returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
