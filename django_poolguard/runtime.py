"""The process runtime: one object per process that owns poolguard's background work and its lifecycle.

It holds the watchdog and its ordered list of tasks (leak scan, leak-event writer, alerts, slot
check, the profile's idle sampling, publishing, metrics), the Prometheus exporter, the fleet
budget's lease keepers (one thread per budgeted alias, started with its pool), and the two
process hooks of the whole package: one ``os.register_at_fork`` handler that resets every
component in a forked child in a fixed order, and one ``atexit`` hook that shuts them down in a
fixed order. No other module
registers a fork or exit handler.

``AppConfig.ready()`` creates and starts it (:func:`start`); without the app in ``INSTALLED_APPS``
(system check W011) the first pool creates it, and it then runs no tasks but still keeps forks and
exits safe. It is the one module that knows every layer; nothing below imports it, except the
ENGINE creating it at its first pool (see ``DatabaseWrapper._build_pool``).
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from django.core.signals import setting_changed

from django_poolguard.engine import pool as pools
from django_poolguard.engine import side_connection
from django_poolguard.fleet import leases, publish
from django_poolguard.watchdog import alerts, idle_sites, leak_events, leaks, slots
from django_poolguard.watchdog.monitor import Watchdog, monitor_interval

if TYPE_CHECKING:
    from django_poolguard.integrations.metrics import Exporter

logger = logging.getLogger("django_poolguard")

EXIT_WATCHDOG_TIMEOUT = 2.0  # s the exit waits for a watchdog pass in progress
# At exit, close the pools while the interpreter still works: left to psycopg_pool's __del__,
# each pool joins its threads with a 5 s timeout during shutdown (20 s exits on Python 3.13).
EXIT_POOL_TIMEOUT = 1.0


class Runtime:
    """poolguard's background machinery for one process; tests build their own and drop it."""

    def __init__(self) -> None:
        self.watchdog = Watchdog()
        self.exporter: Exporter | None = None  # when prometheus_client is installed
        self.started = False  # tasks added (AppConfig.ready); a runtime without the app only guards forks

    # --- Tasks --------------------------------------------------------------------------------

    def add_task(
        self, name: str, run: Callable[[], object], every: Callable[[], float] = monitor_interval
    ) -> None:
        """Run ``run()`` on the watchdog every ``every()`` seconds, after the tasks added before it."""
        self.watchdog.register(name, run, every)

    def task_names(self) -> list[str]:
        """The watchdog's tasks in the order each pass runs them."""
        return self.watchdog.task_names()

    def start(self) -> None:
        """Add poolguard's tasks, in the order a pass needs them, and start the watchdog with the first pool."""
        if self.started:
            return
        self.started = True
        self.add_task(leaks.TASK_NAME, leaks.scan)
        self.add_task(leak_events.TASK_NAME, leak_events.flush)  # right after the scan that queues them
        self.add_task(alerts.TASK_NAME, alerts.check)  # after the scan, so its leak counts are current
        self.add_task(slots.TASK_NAME, slots.check)  # lost connections recovered, wedged pools replaced
        self.add_task(
            idle_sites.TASK_NAME, idle_sites.sample
        )  # the profile: before publish, so rows are fresh
        self.add_task("publish", publish.publish_now, every=publish.publish_interval)
        if importlib.util.find_spec("prometheus_client") is not None:  # the optional prometheus extra
            # Imported here: prometheus_client is optional, and importing metrics needs it.
            from django_poolguard.integrations.metrics import Exporter as MetricsExporter

            exporter = self.exporter = MetricsExporter()
            self.add_task("metrics", exporter.export)
        pools.on_pool_created(self._pool_created)
        # A budgeted alias's first lease is taken here, before its new pool opens a connection.
        pools.on_pool_created(self._keep_lease)
        pools.registry.wrapper_collected.append(self._wrapper_collected)
        pools.registry.stop_background.append(self.watchdog.stop)

    def _pool_created(self, pool: pools.GuardedPool) -> None:
        self.watchdog.ensure_started()

    def _keep_lease(self, pool: pools.GuardedPool) -> None:
        leases.keep_lease(pool)

    def _wrapper_collected(self) -> None:
        # From a weakref callback inside the garbage collector: nudge takes no lock and does no I/O.
        self.watchdog.nudge(leaks.TASK_NAME)

    def stop(self) -> None:
        """Undo :meth:`start`: no task runs and nothing calls back into this runtime any more."""
        self.watchdog.stop()
        pools.forget_pool_created(self._pool_created)
        pools.forget_pool_created(self._keep_lease)
        registry, mine = pools.registry, (self, self.watchdog)
        # Rebuilt, not mutated: a garbage-collector callback may be iterating the old list.
        registry.wrapper_collected = [
            hook for hook in registry.wrapper_collected if getattr(hook, "__self__", None) not in mine
        ]
        registry.stop_background = [
            hook for hook in registry.stop_background if getattr(hook, "__self__", None) not in mine
        ]
        self.started = False

    # --- Lifecycle ----------------------------------------------------------------------------

    def after_fork_in_child(self) -> None:
        """Make a forked child a process of its own, component by component, in this order."""
        # First the pools: the parent's sockets are pointed at /dev/null before anything could use them.
        pools.after_fork_in_child()
        side_connection.reset_after_fork()
        leases.reset_after_fork()  # the parent's leases stay the parent's; the child takes its own
        self.watchdog.reset_after_fork()  # the parent's thread does not exist here
        leaks.reset_after_fork()
        leak_events.reset_after_fork()
        alerts.reset_after_fork()
        slots.reset_after_fork()
        if self.exporter is not None:
            # The child starts with no pools, and the lock may have been held by the parent's watchdog.
            exporter = self.exporter = type(self.exporter)()
            self.add_task("metrics", exporter.export)
        publish.reset_after_fork()

    def shutdown(self) -> None:
        """Leave cleanly at exit, in this order; each step is independent of the others failing."""
        steps: tuple[tuple[str, Callable[[], object]], ...] = (
            # First, so no pass publishes, writes or scans while we leave.
            ("stop the watchdog", lambda: self.watchdog.stop(EXIT_WATCHDOG_TIMEOUT)),
            ("withdraw the published snapshot", publish.withdraw),
            ("write the pending leak events", leak_events.flush_at_exit),
            ("close the pools", lambda: pools.close_all_pools(EXIT_POOL_TIMEOUT)),
            # Once the pools' connections are closed, and over the side connections closed next.
            ("release the fleet-budget leases", leases.release_all),
            ("close the side connections", side_connection.close_all),  # last: the two above use them
        )
        for what, step in steps:
            try:
                step()
            except Exception:  # never let poolguard spoil interpreter exit
                logger.debug("poolguard could not %s at exit", what, exc_info=True)


# The process's runtime; replaced in a forked child by nothing (the same object resets itself).
_runtime: Runtime | None = None
# Serializes creation: AppConfig.ready and a first pool on another thread may race.
_runtime_lock = threading.Lock()


def get_runtime() -> Runtime:
    """This process's runtime, created on first use."""
    global _runtime
    runtime = _runtime
    if runtime is None:
        with _runtime_lock:
            if _runtime is None:
                _runtime = Runtime()
                # Even without the app (W011): a budgeted pool opens nothing until it has a lease.
                pools.on_pool_created(_runtime._keep_lease)
            runtime = _runtime
    return runtime


def start() -> Runtime:
    """Create this process's runtime if needed and start its tasks (``AppConfig.ready`` calls this)."""
    runtime = get_runtime()
    runtime.start()
    return runtime


def _after_fork_in_child() -> None:
    global _runtime_lock
    _runtime_lock = threading.Lock()
    if _runtime is not None:
        _runtime.after_fork_in_child()
    else:  # nothing was started, but the engine may hold pools (created before this module loaded)
        pools.after_fork_in_child()
        side_connection.reset_after_fork()


def _at_exit() -> None:
    if _runtime is not None:
        _runtime.shutdown()
    else:
        pools.close_all_pools(EXIT_POOL_TIMEOUT)


def _settings_changed(*, setting: str, **kwargs: object) -> None:
    # override_settings(POOLGUARD=...) takes effect at once, not after the old interval.
    if setting == "POOLGUARD" and _runtime is not None:
        _runtime.watchdog.wake()


setting_changed.connect(_settings_changed, dispatch_uid="django_poolguard.runtime.settings_changed")
# The package's only fork handler and only exit hook: the order lives in Runtime, not in import order.
os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)

__all__ = ["Runtime", "get_runtime", "start"]
