"""``/metrics``: django-prometheus's view where it installs, else the same export from
prometheus_client alone (django-prometheus 2.5 pins Django < 6.1). Both serve the default
registry, where poolguard's metrics live, and merge gunicorn's workers when
``PROMETHEUS_MULTIPROC_DIR`` is set (the demo sets it)."""

from __future__ import annotations

import os
from typing import Any

from django.http import HttpRequest, HttpResponse

try:
    from django_prometheus.exports import ExportToDjangoView as metrics_view
except ImportError:

    def metrics_view(request: HttpRequest) -> HttpResponse:  # type: ignore[misc]
        import prometheus_client
        from prometheus_client import multiprocess

        registry: Any = prometheus_client.REGISTRY
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = prometheus_client.CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        return HttpResponse(
            prometheus_client.generate_latest(registry), content_type=prometheus_client.CONTENT_TYPE_LATEST
        )


__all__ = ["metrics_view"]
