"""How many tasks a worker process runs at once, as the start-up check counts them against
``max_size`` (the real worker is exercised in test_celery.py; these cover the pool kinds and
options not started there)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from celery.concurrency import get_implementation
from django.test import override_settings

from django_poolguard.celery import concurrency_problem, worker_task_concurrency


@pytest.mark.parametrize(
    ("pool_cls", "concurrency", "autoscale", "expected"),
    [
        (get_implementation("prefork"), 16, None, 1),
        ("prefork", 16, None, 1),
        (get_implementation("solo"), 1, None, 1),
        (get_implementation("threads"), 8, None, 8),
        ("gevent", 100, None, 100),
        ("eventlet", 50, (80, 10), 80),
        (get_implementation("threads"), 4, (6, 2), 6),
    ],
)
def test_tasks_at_once_per_process(pool_cls, concurrency, autoscale, expected):
    worker = SimpleNamespace(pool_cls=pool_cls, concurrency=concurrency, autoscale=autoscale)
    assert worker_task_concurrency(worker) == expected


def test_within_max_size_is_fine():
    worker = SimpleNamespace(pool_cls="threads", concurrency=4, autoscale=None)
    assert concurrency_problem(worker) is None


def test_over_max_size_names_the_setting_and_the_fix():
    worker = SimpleNamespace(pool_cls="gevent", concurrency=50, autoscale=None)
    problem = concurrency_problem(worker)
    assert problem is not None
    assert "runs up to 50 tasks at once per process" in problem
    assert "DATABASES['worker']['OPTIONS']['pool']['max_size'] is 4" in problem
    assert "--concurrency=4" in problem
    assert "raise max_size to 50" in problem


def test_without_a_worker_alias_the_web_alias_is_checked():
    with override_settings(POOLGUARD={"WORKLOADS": {"web": "default"}}):
        problem = concurrency_problem(SimpleNamespace(pool_cls="threads", concurrency=20, autoscale=None))
    assert problem is not None and "DATABASES['default']['OPTIONS']['pool']['max_size'] is 8" in problem
