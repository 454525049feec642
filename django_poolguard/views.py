"""HTTP views: the health endpoint and a metrics export (the admin dashboard lives in admin.py)."""

from __future__ import annotations

import os
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from django_poolguard.web.health import health, is_critical


@never_cache
@require_safe
def health_view(request: HttpRequest) -> JsonResponse:
    """``GET /poolguard/health/``: 200 unless an alias is critical (then 503); see docs/health.md."""
    report = health()
    return JsonResponse(report, status=503 if is_critical(report) else 200)


def metrics_view(request: HttpRequest) -> HttpResponse:
    """The default Prometheus registry, where poolguard's metrics live, in the text format.

    For projects without django-prometheus (2.5 pins Django < 6.1); its ``ExportToDjangoView``
    does the same. With ``PROMETHEUS_MULTIPROC_DIR`` set, the files of every worker process
    are merged, as prometheus_client's multiprocess mode requires. Route it yourself:
    ``path("metrics", metrics_view)``.
    """
    import prometheus_client
    from prometheus_client import multiprocess

    registry: Any = prometheus_client.REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = prometheus_client.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return HttpResponse(
        prometheus_client.generate_latest(registry), content_type=prometheus_client.CONTENT_TYPE_LATEST
    )
