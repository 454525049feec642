"""Checkouts are attributed to what caused them: request, task or management command."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from django_poolguard.engine.context import detect_process_role


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["manage.py", "migrate", "--noinput"], ("command", "command migrate")),
        (["/srv/app/manage.py", "send_reports"], ("command", "command send_reports")),
        (["django-admin", "poolstats", "--json"], ("command", "command poolstats")),
        (["manage.py", "runserver"], ("web", None)),
        (["/venv/bin/gunicorn", "shop.wsgi"], ("web", None)),
        (["/venv/bin/celery", "-A", "shop", "worker"], ("worker", None)),
    ],
)
def test_process_role_from_the_command_line(argv, expected):
    assert detect_process_role(argv) == expected


@pytest.mark.django_db(transaction=True)
def test_a_management_command_labels_its_checkouts():
    """A real ``django-admin`` process: its checkouts carry ``command <name>``."""
    code = (
        "import django; django.setup();"
        "from django.core.management import call_command;"
        "call_command('showmigrations', 'django_poolguard', verbosity=0);"
        "import django_poolguard; from django.db import connection;"
        "connection.ensure_connection();"
        "print(django_poolguard.snapshot()['default']['checkouts'][0]['context'])"
    )
    script = f"import sys; sys.argv = ['manage.py', 'showmigrations']; {code}"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60, cwd=os.getcwd()
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "command showmigrations"
