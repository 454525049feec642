"""HTTP views: the health endpoint (the admin dashboard lives in admin.py)."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from .health import health, is_critical


@never_cache
@require_safe
def health_view(request: HttpRequest) -> JsonResponse:
    """``GET /poolguard/health/``: 200 unless an alias is critical (then 503); see docs/health.md."""
    report = health()
    return JsonResponse(report, status=503 if is_critical(report) else 200)
