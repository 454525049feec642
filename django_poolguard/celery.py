"""Celery wiring, connected from ``AppConfig.ready()`` when Celery is installed.

- Each task runs in the ``worker`` workload (so :class:`~django_poolguard.routers.WorkloadRouter`
  sends it to the worker alias) and its checkouts carry ``task <name>[<id>]`` in the ledger.
- At the end of every task, even a failing one, the task thread's connections on guarded aliases
  go back to their pools.
- A worker process owns its pools until it exits: Celery's Django fixup calls ``close_pool()``
  after each task under prefork (celery#10554, psycopg#1232), which poolguard turns into "return
  this thread's connection" (see :func:`django_poolguard.engine.pool.keep_pools_open`). Forked children
  get fresh pools (:mod:`django_poolguard.engine.pool` clears them at fork).
- At worker start, per-process task concurrency is checked against the worker alias's ``max_size``.

Eager tasks (``task_always_eager``, ``task.apply()``) run inside their caller: they get the task
label but keep the caller's workload and connections.
"""

from __future__ import annotations

import logging
import threading
from time import monotonic
from typing import Any

from django.db import connections

from django_poolguard.backends.postgresql.base import DatabaseWrapper
from django_poolguard.conf import is_guarded, pool_max_size
from django_poolguard.engine.context import bounded, reset_context, set_context, set_process_role
from django_poolguard.engine.pool import all_pools, close_all_pools, keep_pools_open
from django_poolguard.engine.priority import PRIORITY_CLASSES, rank_for_task, reset_priority, set_priority
from django_poolguard.escaping import escape_controls
from django_poolguard.integrations.workloads import WORKER, alias_for, enter, leave, web_alias

try:
    from celery import signals
except ImportError:  # pragma: no cover - celery is an optional extra
    signals = None  # type: ignore[assignment]

logger = logging.getLogger("django_poolguard")

SINGLE_TASK_POOLS = ("prefork", "processes", "solo")  # one task at a time per process

# task id -> (context token, workload token, start, priority token), set in task_prerun and reset in task_postrun.
# Both run in the task's own thread/greenlet; a dict keyed by id needs no lock under the GIL.
_tokens: dict[str, tuple[Any, Any, float, Any]] = {}
# True in processes that run one task at a time (prefork children, solo): there, a checkout made
# by another thread during a task can only come from a thread the task started.
_one_task_at_a_time = False


def connect_signals() -> bool:
    """Connect poolguard's receivers to Celery's signals; ``False`` when Celery is not installed."""
    if signals is None:
        return False
    uid = "django_poolguard.celery."
    signals.task_prerun.connect(on_task_prerun, weak=False, dispatch_uid=uid + "task_prerun")
    signals.task_postrun.connect(on_task_postrun, weak=False, dispatch_uid=uid + "task_postrun")
    signals.worker_init.connect(on_worker_init, weak=False, dispatch_uid=uid + "worker_init")
    signals.worker_process_init.connect(
        on_worker_process_init, weak=False, dispatch_uid=uid + "worker_process_init"
    )
    signals.worker_process_shutdown.connect(
        on_worker_shutdown, weak=False, dispatch_uid=uid + "worker_process_shutdown"
    )
    signals.worker_shutdown.connect(on_worker_shutdown, weak=False, dispatch_uid=uid + "worker_shutdown")
    signals.celeryd_after_setup.connect(
        on_worker_after_setup, weak=False, dispatch_uid=uid + "celeryd_after_setup"
    )
    return True


def task_label(task: Any, task_id: str | None) -> str:
    """``task shop.tasks.export[<id>]``: what the ledger shows as the checkout's context."""
    name = getattr(task, "name", None) or repr(task)
    return f"task {name}[{escape_controls(str(task_id))}]"  # the id comes from the message: log-safe


def _is_eager(task: Any) -> bool:
    return bool(getattr(getattr(task, "request", None), "is_eager", False))


def on_task_prerun(sender: Any = None, task_id: str | None = None, task: Any = None, **kwargs: Any) -> None:
    task = task or sender
    context_token = set_context(task_label(task, task_id))
    workload_token = None if _is_eager(task) else enter(WORKER)
    rank = rank_for_task(getattr(task, "name", None))
    priority_token = set_priority(PRIORITY_CLASSES[rank]) if rank is not None else None
    _tokens[str(task_id)] = (context_token, workload_token, monotonic(), priority_token)


def on_task_postrun(sender: Any = None, task_id: str | None = None, task: Any = None, **kwargs: Any) -> None:
    task = task or sender
    tokens = _tokens.pop(str(task_id), None)
    label = task_label(task, task_id)
    try:
        if not _is_eager(task):
            release_connections(label)
            if _one_task_at_a_time and tokens is not None:
                adopt_thread_checkouts(label, tokens[2])
    finally:
        if tokens is not None:
            context_token, workload_token, _, priority_token = tokens
            if priority_token is not None:
                reset_priority(priority_token)
            if workload_token is not None:
                leave(workload_token)
            reset_context(context_token)


def adopt_thread_checkouts(label: str, since: float) -> int:
    """Label checkouts that threads started by the task still hold after it ended.

    Python does not copy the task's context into a new thread, so such a checkout has none; in a
    process that runs one task at a time it can only come from this task. Naming the task makes the
    leak report (and ``PoolExhausted``) point at it. Returns how many were found.
    """
    current = threading.current_thread()
    found = 0
    for alias, pool in all_pools().items():
        for checkout in pool.ledger.checkouts():
            if checkout.context is not None or checkout.started < since or checkout.thread is current:
                continue
            checkout.context = bounded(f"{label} (thread {checkout.holder})")
            found += 1
            logger.warning(
                "%s ended while thread %r it started still holds a connection of alias %r, acquired at "
                "%s. Close it in that thread (connections.close_all() in a finally block).",
                label,
                checkout.holder,
                alias,
                checkout.origin or "an unknown place",
            )
    return found


def release_connections(label: str = "this thread") -> int:
    """Return this thread's connections on guarded aliases to their pools; how many were returned.

    A task that left a transaction open (``set_autocommit(False)`` never undone, an ``atomic``
    entered by hand) is rolled back and the wrapper reset, so the next task on this thread starts clean.
    """
    returned = 0
    for wrapper in connections.all(initialized_only=True):
        if not isinstance(wrapper, DatabaseWrapper) or wrapper.connection is None:
            continue
        in_transaction = wrapper.in_atomic_block or not wrapper.get_autocommit()
        try:
            wrapper.close()  # a pooled wrapper's close() is putconn(): rolled back if needed
            returned += 1
        except Exception:
            logger.exception("Returning the connection of alias %r after %s failed.", wrapper.alias, label)
        if in_transaction:
            logger.warning(
                "%s ended inside an open transaction on alias %r; it was rolled back and the "
                "connection returned. Wrap the work in transaction.atomic(using=current_alias()).",
                label,
                wrapper.alias,
            )
        if wrapper.connection is not None or wrapper.in_atomic_block:
            # close() inside an atomic block only marks it; forget the block, the pool rolled it back.
            wrapper.forget_connection()
    return returned


def on_worker_init(sender: Any = None, **kwargs: Any) -> None:
    """Worker main process: it is a worker, and owns its pools (solo/threads/gevent run tasks here)."""
    set_process_role(WORKER)
    keep_pools_open()


def on_worker_process_init(**kwargs: Any) -> None:
    """A prefork child: its pools were dropped at fork and will be created on first use."""
    global _one_task_at_a_time
    set_process_role(WORKER)
    keep_pools_open()
    _one_task_at_a_time = True


def on_worker_shutdown(**kwargs: Any) -> None:
    close_all_pools(timeout=2.0)


def worker_task_concurrency(worker: Any) -> int:
    """How many tasks one process of ``worker`` runs at once: 1 for prefork and solo, else the
    thread/greenlet count (the autoscale maximum when larger)."""
    pool_cls = getattr(worker, "pool_cls", "")
    pool_name = pool_cls if isinstance(pool_cls, str) else f"{pool_cls.__module__}.{pool_cls.__qualname__}"
    if any(name in pool_name.lower() for name in SINGLE_TASK_POOLS):
        return 1
    concurrency = int(getattr(worker, "concurrency", 0) or 0)
    autoscale = getattr(worker, "autoscale", None)
    if autoscale:
        concurrency = max(concurrency, int(max(autoscale)))
    return max(concurrency, 1)


def concurrency_problem(worker: Any) -> str | None:
    """The message for a worker that can run more tasks at once than its alias has connections."""
    alias = alias_for(WORKER) or web_alias()
    settings_dict = connections.settings[alias]
    max_size = pool_max_size(settings_dict) if is_guarded(settings_dict) else None
    if max_size is None:
        return None
    concurrency = worker_task_concurrency(worker)
    if concurrency <= max_size:
        return None
    return (
        f"This Celery worker runs up to {concurrency} tasks at once per process but "
        f"DATABASES[{alias!r}]['OPTIONS']['pool']['max_size'] is {max_size}: tasks will queue for a "
        f"connection and fail with PoolExhausted after the pool's timeout. Start the worker with "
        f"--concurrency={max_size} (or worker_concurrency), or raise max_size to {concurrency} "
        "(within the budget: manage.py poolbudget)."
    )


def on_worker_after_setup(sender: Any = None, instance: Any = None, **kwargs: Any) -> None:
    """Worker start: check per-process concurrency against the worker alias's ``max_size``."""
    global _one_task_at_a_time
    if instance is None:
        return
    if worker_task_concurrency(instance) == 1:
        _one_task_at_a_time = True  # solo (prefork children are told in worker_process_init)
    try:
        problem = concurrency_problem(instance)
    except Exception:
        logger.exception("Checking the worker's concurrency against its pool failed.")
        return
    if problem:
        logger.error(problem)


__all__ = [
    "concurrency_problem",
    "connect_signals",
    "release_connections",
    "task_label",
    "worker_task_concurrency",
]
