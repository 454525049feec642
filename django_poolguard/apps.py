from __future__ import annotations

from django.apps import AppConfig


class PoolGuardConfig(AppConfig):
    name = "django_poolguard"
    verbose_name = "Poolguard"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported here, as Django requires of apps.py: nothing may load at import time, and these
        # reach settings and the app registry, which are ready only now.
        from django_poolguard import checks, runtime  # noqa: F401  (checks: @register side effect)
        from django_poolguard.celery import connect_signals  # Celery's signals, when installed
        from django_poolguard.engine import session_timeouts  # noqa: F401  (its system checks)
        from django_poolguard.engine.context import detect_process_role, set_process_role  # see above
        from django_poolguard.fleet import budget  # noqa: F401  (its system checks)

        set_process_role(*detect_process_role())
        runtime.start()  # the watchdog's tasks, one fork handler, one exit hook
        connect_signals()  # a no-op unless Celery is installed
