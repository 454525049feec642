from __future__ import annotations

import importlib.util

from django.apps import AppConfig


class PoolGuardConfig(AppConfig):
    name = "django_poolguard"
    verbose_name = "Poolguard"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import budget, checks, publish, slots  # noqa: F401  (budget and checks register system checks)
        from .celery import connect_signals
        from .context import detect_process_role, set_process_role
        from .leaks import register_tasks
        from .monitor import watchdog
        from .pool import on_pool_created

        set_process_role(*detect_process_role())
        on_pool_created(lambda pool: watchdog.ensure_started())
        register_tasks()  # leak scan, LeakEvent writer, alerts
        slots.register()  # the slot check: lost connections recovered, wedged pools replaced
        connect_signals()  # a no-op unless Celery is installed
        publish.register()
        if importlib.util.find_spec("prometheus_client") is not None:  # the optional prometheus extra
            from . import metrics

            metrics.install()
