"""The watchdog: one daemon thread per process that runs poolguard's periodic work.

The process runtime (:mod:`django_poolguard.runtime`) owns it and adds the tasks (leak scans,
dead-holder reclaim, alerts, the slot check, publishing, metrics), each with its own interval.
The thread starts with the first pool, restarts in a forked child on its first pool, and the
runtime stops it at interpreter exit. A task never runs on a request
thread, and a failing task is logged and retried next interval, never raised.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from time import monotonic

from django_poolguard.conf import guard_settings

logger = logging.getLogger("django_poolguard")

MAX_SLEEP = 1.0  # s: the thread re-reads intervals at least this often, so override_settings applies quickly


def monitor_interval() -> float:
    return float(guard_settings.MONITOR_INTERVAL)


@dataclass
class Task:
    name: str
    run: Callable[[], object]
    interval: Callable[[], float]
    next_run: float = field(default=0.0)


class Watchdog:
    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        # Guards _tasks and _thread: registration, start and stop may race with each other.
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._pid = os.getpid()

    def register(
        self, name: str, run: Callable[[], object], interval: Callable[[], float] = monitor_interval
    ) -> None:
        """Run ``run()`` every ``interval()`` seconds; registering a name again replaces it."""
        with self._lock:
            self._tasks[name] = Task(name, run, interval)
        self._wake.set()

    def task_names(self) -> list[str]:
        """The tasks in the order each pass runs them (the order they were first registered)."""
        with self._lock:
            return list(self._tasks)

    def nudge(self, name: str) -> None:
        """Make task ``name`` due now; the thread runs it within ``MAX_SLEEP``.

        Takes no lock and does no I/O, so it is safe from weakref callbacks and ``__del__``
        (which may run inside the garbage collector, on any thread, holding any lock).
        """
        task = self._tasks.get(name)
        if task is not None:
            task.next_run = 0.0

    def wake(self) -> None:
        """Run every task now, e.g. after the settings changed (takes a lock: not for GC callbacks)."""
        with self._lock:
            for task in self._tasks.values():
                task.next_run = 0.0
        self._wake.set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._pid == os.getpid()

    def ensure_started(self) -> None:
        if self.running:
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="poolguard-watchdog", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread() and self._pid == os.getpid():
            thread.join(timeout)
        self._thread = None

    def run_once(self, *, force: bool = False) -> None:
        """Run every due task now (all of them with ``force``); tests and commands call this."""
        now = monotonic()
        with self._lock:
            tasks = list(self._tasks.values())
        for task in tasks:
            if not force and now < task.next_run:
                continue
            try:
                task.run()
            except Exception:
                logger.exception(
                    "poolguard watchdog task %r failed; it will run again next interval", task.name
                )
            try:
                task.next_run = monotonic() + max(0.01, float(task.interval()))
            except Exception:
                task.next_run = monotonic() + MAX_SLEEP

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            with self._lock:
                next_run = min((t.next_run for t in self._tasks.values()), default=monotonic() + MAX_SLEEP)
            delay = min(MAX_SLEEP, max(0.0, next_run - monotonic()))
            self._wake.wait(delay)
            self._wake.clear()

    def reset_after_fork(self) -> None:
        # The parent's thread does not exist here; the child's first pool starts a new one.
        self._thread = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._pid = os.getpid()


__all__ = ["MAX_SLEEP", "Task", "Watchdog", "monitor_interval"]
