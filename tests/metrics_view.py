"""The ``/metrics`` view for test apps: django-prometheus's own where it installs.

django-prometheus 2.5 pins Django < 6.1, so the Django 6.1 environments serve the default
registry the way django-prometheus does (multiprocess-aware), with prometheus_client only.
"""

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
