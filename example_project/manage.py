#!/usr/bin/env python3
"""The example shop's manage.py. Runs from a checkout without installing django_poolguard, with
any python3: without Django it re-runs itself in ``example_project/.venv`` (see demo.py)."""

import importlib.util
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    # The checkout's django_poolguard wins over an installed one, so the demo shows this tree.
    sys.path[:0] = [str(HERE), str(HERE.parent)]
    if importlib.util.find_spec("django") is None:
        # Run by a python3 without Django (the README's `python3 example_project/manage.py ...`):
        # use the demo's example_project/.venv, creating it if needed.
        from demo import ensure_environment

        ensure_environment(Path(__file__), sys.argv[1:])
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop_project.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
