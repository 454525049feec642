"""``/metrics``: django-prometheus's view where it installs (2.5 pins Django < 6.1), else
poolguard's own export of the same default registry. Both merge gunicorn's workers when
``PROMETHEUS_MULTIPROC_DIR`` is set."""

from __future__ import annotations

try:
    from django_prometheus.exports import ExportToDjangoView as metrics_view
except ImportError:
    from django_poolguard.views import metrics_view

__all__ = ["metrics_view"]
