"""Integrations with other libraries: Prometheus metrics and Celery/route workloads."""
