"""The process runtime: one fork handler and one exit hook for the whole package, components reset
and shut down in a fixed order, and a runtime a test can build and drop without touching globals."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from django.db import connections

from django_poolguard.engine import pool as pools
from django_poolguard.runtime import Runtime, get_runtime

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "django_poolguard"


def _calls(name: str) -> list[str]:
    """``file:line`` of every call to ``<anything>.name(...)`` in the package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == name:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_the_package_registers_one_fork_handler_and_one_exit_hook() -> None:
    forks = _calls("register_at_fork")
    exits = [call for call in _calls("register") if _is_atexit(call)]
    assert len(forks) == 1 and forks[0].startswith("django_poolguard/runtime.py:"), forks
    assert len(exits) == 1 and exits[0].startswith("django_poolguard/runtime.py:"), exits


def _is_atexit(call: str) -> bool:
    path, line = call.rsplit(":", 1)
    return "atexit.register" in (ROOT / path).read_text().splitlines()[int(line) - 1]


def test_the_app_starts_the_process_runtime_with_its_tasks_in_order() -> None:
    tasks = get_runtime().task_names()
    expected = ["leaks", "leak-events", "alerts", "slots", "profile", "publish", "metrics"]
    assert tasks == expected


def test_a_runtime_a_test_builds_runs_its_own_watchdog_and_drops_without_a_trace() -> None:
    process_runtime = get_runtime()
    hooks_before = (list(pools.registry.wrapper_collected), list(pools.registry.stop_background))
    runtime = Runtime()
    runtime.start()
    assert runtime.task_names() == process_runtime.task_names()
    assert runtime.watchdog is not process_runtime.watchdog

    # A checkout's wrapper collected: both runtimes' leak scans are asked for at once.
    for task in runtime.watchdog._tasks.values():
        task.next_run = 1e12
    pools.wrapper_collected(None)  # type: ignore[arg-type]
    assert runtime.watchdog._tasks["leaks"].next_run == 0.0
    assert runtime.watchdog._tasks["slots"].next_run == 1e12

    runtime.stop()
    assert (list(pools.registry.wrapper_collected), list(pools.registry.stop_background)) == hooks_before
    assert not runtime.watchdog.running
    for task in runtime.watchdog._tasks.values():
        task.next_run = 1e12
    pools.wrapper_collected(None)  # type: ignore[arg-type]
    assert runtime.watchdog._tasks["leaks"].next_run == 1e12, "a dropped runtime is not called back"


def _run(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def child_env(django_db_setup: object) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "PYTHONPATH": str(ROOT),
        "POOLGUARD_DB_NAME": connections["default"].settings_dict["NAME"],
    }


@pytest.mark.django_db(transaction=True)
def test_a_forked_child_resets_every_component(child_env: dict[str, str]) -> None:
    """The parent has a pool, a running watchdog, a published snapshot, a side connection and a
    queued leak event; its forked child starts with none of them and works on its own sessions."""
    result = _run(
        """
        import os, sys, time
        import django
        django.setup()
        from django.db import connections
        from django_poolguard.engine import side_connection
        from django_poolguard.engine.pool import all_pools
        from django_poolguard.fleet import publish
        from django_poolguard.runtime import get_runtime
        from django_poolguard.watchdog import leak_events, leaks

        wrapper = connections["worker"]
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            parent_backend = cursor.fetchone()[0]
        time.sleep(0.3)  # past the worker alias's leak_threshold, still checked out
        leaks.scan()  # queues a leak event, not written yet
        assert publish.publish_now() and side_connection._connections and leak_events._pending
        assert get_runtime().watchdog.running

        pid = os.fork()
        if pid == 0:
            problems = []
            if all_pools():
                problems.append("inherited pools")
            if get_runtime().watchdog.running:
                problems.append("a running watchdog")
            if side_connection._connections or leak_events._pending or publish._published:
                problems.append("inherited side connections, leak events or published key")
            with wrapper.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                if cursor.fetchone()[0] == parent_backend:
                    problems.append("the parent's session")
            wrapper.close()
            print("child:", problems, flush=True)
            os._exit(1 if problems else 0)
        _, status = os.waitpid(pid, 0)
        with wrapper.cursor() as cursor:  # the parent's session survived the child
            cursor.execute("SELECT pg_backend_pid()")
            assert cursor.fetchone()[0] == parent_backend
        wrapper.close()
        print("exit", os.waitstatus_to_exitcode(status))
        """,
        {**child_env, "POOLGUARD_WORKER_LEAK_THRESHOLD": "0.1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "exit 0" in result.stdout, result.stdout + result.stderr[-3000:]


@pytest.mark.django_db(transaction=True)
def test_a_clean_exit_withdraws_writes_the_leak_events_and_closes_every_session(
    child_env: dict[str, str],
) -> None:
    result = _run(
        """
        import os, time
        import django
        django.setup()
        from django.db import connections
        from django_poolguard.fleet import publish
        from django_poolguard.watchdog import leaks

        with connections["worker"].cursor() as cursor:
            cursor.execute("SELECT 1")
        time.sleep(0.3)
        leaks.scan()  # queued, and the process exits before the watchdog writes it
        assert publish.publish_now()
        print(os.getpid(), publish.process_key(), flush=True)
        """,
        {**child_env, "POOLGUARD_WORKER_LEAK_THRESHOLD": "0.1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    pid, key = result.stdout.split()
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM django_poolguard_processsnapshot WHERE key = %s", [key])
        assert cursor.fetchone()[0] == 0, "the published snapshot was not withdrawn"
        cursor.execute("SELECT count(*) FROM django_poolguard_leakevent WHERE pid = %s", [int(pid)])
        assert cursor.fetchone()[0] == 1, "the queued leak event was not written at exit"
        # A server process ends a moment after its client said goodbye: allow it that moment.
        deadline = time.monotonic() + 5
        while True:
            cursor.execute(
                "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE %s",
                [f"%:{pid}"],
            )
            left = cursor.fetchall()
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert left == [], "a session of the exited process is still open"
