from __future__ import annotations

import importlib.util

from django.apps import AppConfig


class PoolGuardConfig(AppConfig):
    name = "django_poolguard"
    verbose_name = "Poolguard"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported for their @register side effect: the system checks.
        from django_poolguard import checks  # noqa: F401
        from django_poolguard.celery import connect_signals
        from django_poolguard.engine import profile, session_timeouts  # noqa: F401
        from django_poolguard.engine.context import detect_process_role, set_process_role
        from django_poolguard.engine.pool import on_pool_created
        from django_poolguard.fleet import budget, publish  # noqa: F401  (budget: system checks)
        from django_poolguard.watchdog.leaks import register_tasks
        from django_poolguard.watchdog.monitor import watchdog

        set_process_role(*detect_process_role())
        on_pool_created(lambda pool: watchdog.ensure_started())
        register_tasks()  # leak scan, LeakEvent writer, alerts
        watchdog.register(profile.TASK_NAME, profile.sample)  # where holders wait between queries
        connect_signals()  # a no-op unless Celery is installed
        publish.register()
        if importlib.util.find_spec("prometheus_client") is not None:  # the optional prometheus extra
            from django_poolguard.integrations import metrics

            metrics.install()
