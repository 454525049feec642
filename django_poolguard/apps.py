from __future__ import annotations

from django.apps import AppConfig


class PoolGuardConfig(AppConfig):
    name = "django_poolguard"
    verbose_name = "Poolguard"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
        from .celery import connect_signals
        from .context import detect_process_role, set_process_role
        from .monitor import watchdog
        from .pool import on_pool_created

        set_process_role(*detect_process_role())
        on_pool_created(lambda pool: watchdog.ensure_started())
        connect_signals()  # a no-op unless Celery is installed
