"""A real Celery worker on the test database: tasks use the worker alias's pool, keep it across
tasks under prefork, return their connection even when they fail, and show up in the ledger.

The broker is Redis when it answers on 127.0.0.1:6379, else kombu's filesystem transport
(``POOLGUARD_TEST_BROKER=filesystem`` forces it); see tests/celery_app/config.py.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connections

from tests.celery_app.worker import Worker

# django_db makes pytest-django create the test database, which the worker process then uses.
pytestmark = [pytest.mark.celery, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

WORKER_MAX_SIZE = 4  # tests/settings.py: DATABASES["worker"]["OPTIONS"]["pool"]["max_size"]
LEAK_THRESHOLD = 1.0  # s, the worker alias's leak_threshold in these workers


@pytest.fixture(scope="module")
def test_database(django_db_setup: Any, django_db_blocker: Any) -> str:
    with django_db_blocker.unblock():
        return str(connections["default"].settings_dict["NAME"])


@pytest.fixture(scope="module")
def prefork_worker(test_database: str) -> Iterator[Worker]:
    """prefork, 2 children, with Celery's own Django fixup (what projects run)."""
    env = {"POOLGUARD_WORKER_LEAK_THRESHOLD": str(LEAK_THRESHOLD)}
    with Worker(test_database, pool="prefork", concurrency=2, env=env) as worker:
        yield worker


@pytest.fixture(scope="module")
def threads_worker(test_database: str) -> Iterator[Worker]:
    """threads, 4 at once, *without* Celery's Django fixup: returning connections is poolguard's job alone."""
    env = {"POOLGUARD_WORKER_LEAK_THRESHOLD": str(LEAK_THRESHOLD)}
    with Worker(test_database, pool="threads", concurrency=4, fixup=False, env=env) as worker:
        yield worker


def run_many(worker: Worker, task: str, count: int, *args: Any) -> list[dict[str, Any]]:
    results = [worker.send(task, *args) for _ in range(count)]
    return [result.get(timeout=120, interval=0.05) for result in results]


def state_of(worker: Worker, pid: int, attempts: int = 10) -> dict[str, Any]:
    """The ledger of worker process ``pid``: tasks sent together and lingering a moment land on
    different prefork children, so a few rounds reach every child."""
    for _ in range(attempts):
        for state in run_many(worker, "pool_state", 4, 0.3):
            if state["pid"] == pid:
                return state
    raise AssertionError(f"no pool_state task reached process {pid} in {attempts} rounds")


def checkouts_of(state: dict[str, Any]) -> list[dict[str, Any]]:
    return state["aliases"].get("worker", {}).get("checkouts", [])


def test_tasks_run_on_the_worker_alias(prefork_worker: Worker) -> None:
    for result in run_many(prefork_worker, "whoami", 20):
        assert result["alias"] == result["current_alias"] == "worker"
        assert result["application_name"].startswith("worker:worker:")
        # <workload>:<alias>:<host>:<pid>: the session was opened by the child that ran the task.
        assert result["application_name"].endswith(f":{result['pid']}")


def test_prefork_children_get_fresh_pools(prefork_worker: Worker) -> None:
    parent = prefork_worker.parent()  # the main process opened the worker pool before forking
    results = run_many(prefork_worker, "whoami", 20)
    assert {r["pid"] for r in results}.isdisjoint({parent["pid"]})
    assert parent["backend_pid"] not in {r["backend_pid"] for r in results}


def test_500_tasks_use_at_most_max_size_sessions_per_child(prefork_worker: Worker) -> None:
    """Celery's fixup calls close_pool() after each prefork task; poolguard keeps the pool instead."""
    sessions: dict[int, set[int]] = defaultdict(set)
    for result in run_many(prefork_worker, "whoami", 500):
        sessions[result["pid"]].add(result["backend_pid"])
    assert sessions, "no task ran"
    for pid, backend_pids in sessions.items():
        assert len(backend_pids) <= WORKER_MAX_SIZE, f"child {pid} opened {len(backend_pids)} sessions"
        state = state_of(prefork_worker, pid)
        assert state["role"] == "worker"
        assert state["aliases"]["worker"]["connections_opened_total"] <= WORKER_MAX_SIZE


@pytest.mark.parametrize("worker_fixture", ["prefork_worker", "threads_worker"])
def test_a_failing_task_returns_its_connection(worker_fixture: str, request: pytest.FixtureRequest) -> None:
    worker: Worker = request.getfixturevalue(worker_fixture)
    failed = worker.send("fail")
    failed.get(timeout=60, interval=0.05, propagate=False)
    assert failed.failed()
    message = str(failed.result)
    assert "failing on purpose in process" in message
    pid = int(message.rsplit(" ", 1)[-1])

    state = state_of(worker, pid)
    worker_pool = state["aliases"]["worker"]
    assert worker_pool["acquired_total"] >= 1
    assert not [c for c in checkouts_of(state) if failed.id in c["context"]]
    assert worker_pool["in_use"] == 0


@pytest.mark.parametrize("worker_fixture", ["prefork_worker", "threads_worker"])
def test_a_task_holding_a_connection_is_in_the_ledger_with_its_name_and_id(
    worker_fixture: str, request: pytest.FixtureRequest
) -> None:
    worker: Worker = request.getfixturevalue(worker_fixture)
    holding = worker.send("hold", LEAK_THRESHOLD + 0.5)
    result = holding.get(timeout=60, interval=0.05)
    alias = result["aliases"]["worker"]
    assert alias["leak_threshold"] == LEAK_THRESHOLD
    label = f"task tests.celery_app.tasks.hold[{holding.id}]"
    mine = [c for c in alias["checkouts"] if c["context"] == label]
    assert len(mine) == 1, alias["checkouts"]
    assert mine[0]["held_s"] > LEAK_THRESHOLD
    assert mine[0]["thread"] == result["thread"]
    # Returned at the end of the task: Celery stores the result before task_postrun runs, so
    # the return may trail the result by a moment.
    deadline = time.monotonic() + 10
    while [c for c in checkouts_of(state_of(worker, result["pid"])) if c["context"] == label]:
        assert time.monotonic() < deadline, "the task's connection was never returned"
        time.sleep(0.1)


@pytest.mark.parametrize("worker_fixture", ["prefork_worker", "threads_worker"])
def test_a_task_that_leaves_a_transaction_open_is_rolled_back_and_the_worker_recovers(
    worker_fixture: str, request: pytest.FixtureRequest
) -> None:
    worker: Worker = request.getfixturevalue(worker_fixture)
    name = f"never committed {worker_fixture}"
    pid = worker.run("leave_transaction_open", name)
    assert worker.run("count_items", name) == 0  # rolled back, not committed at task end
    # Every thread of every process keeps working: no wrapper is left "inside" the dead transaction.
    results = run_many(worker, "whoami", 12)
    assert all(r["alias"] == "worker" for r in results)
    assert "ended inside an open transaction on alias 'worker'" in worker.log()
    assert not checkouts_of(state_of(worker, pid))


@pytest.mark.parametrize("pool", ["prefork", "solo"])
def test_a_connection_leaked_into_a_thread_names_the_task(test_database: str, pool: str) -> None:
    """One task at a time per process: what a thread still holds when the task ends is the task's.
    (A worker of its own: the leaked connection stays checked out.)"""
    with Worker(test_database, pool=pool, concurrency=1) as worker:
        leaking = worker.send("leak_into_thread", 30)
        pid = leaking.get(timeout=60, interval=0.05)
        label = f"task tests.celery_app.tasks.leak_into_thread[{leaking.id}] (thread report-uploader)"
        assert [c for c in checkouts_of(state_of(worker, pid)) if c["context"] == label]
        assert (
            f"task tests.celery_app.tasks.leak_into_thread[{leaking.id}] ended while thread 'report-uploader' "
            "it started still holds a connection of alias 'worker', acquired at tests/celery_app/tasks.py:"
        ) in worker.log()


def test_threads_share_a_bounded_pool(threads_worker: Worker) -> None:
    results = run_many(threads_worker, "whoami", 60)
    assert {r["pid"] for r in results} == {results[0]["pid"]}  # one process, four threads
    assert len({r["thread"] for r in results}) > 1
    assert len({r["backend_pid"] for r in results}) <= WORKER_MAX_SIZE
    assert all(r["application_name"].startswith("worker:worker:") for r in results)


def test_concurrency_within_max_size_is_not_reported(prefork_worker: Worker, threads_worker: Worker) -> None:
    assert "tasks at once per process" not in prefork_worker.log()
    assert "tasks at once per process" not in threads_worker.log()


def test_worker_start_reports_more_threads_than_connections(test_database: str) -> None:
    with Worker(test_database, pool="threads", concurrency=8, fixup=False) as worker:
        worker.run("pool_state")
        log = worker.log()
    assert "runs up to 8 tasks at once per process" in log
    assert "DATABASES['worker']['OPTIONS']['pool']['max_size'] is 4" in log
    assert "--concurrency=4" in log
