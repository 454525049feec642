"""Celery tasks: receipts after checkout, the nightly report, and a backfill heavy enough to
starve the API when it shares the API's pool."""

from __future__ import annotations

import time

from celery import shared_task
from django.db import connections
from django.db.models import F, Sum

from django_poolguard import current_alias, workload

from .models import Order


@shared_task
def send_receipt(order_id: int) -> None:
    """Marks the order's receipt sent (the e-mail itself is pretend)."""
    time.sleep(0.1)
    Order.objects.filter(pk=order_id).update(receipt_sent=True)


@shared_task
@workload("analytics")
def nightly_revenue_report(seconds: float = 4.0) -> int:
    """The report, as a task: on the analytics pool even inside a worker."""
    from .views import revenue_by_day

    return len(revenue_by_day(seconds))


@shared_task
def backfill_order_totals(first_id: int, last_id: int, seconds: float = 3.0) -> int:
    """Recomputes order totals for a range of ids; ``pg_sleep`` makes it as heavy as a real one."""
    with connections[current_alias()].cursor() as cursor:
        cursor.execute("SELECT pg_sleep(%s)", [seconds])
    updated = 0
    for order in Order.objects.filter(pk__range=(first_id, last_id)).annotate(
        computed=Sum(F("lines__price") * F("lines__quantity"))
    ):
        if order.computed is not None and order.computed != order.total:
            Order.objects.filter(pk=order.pk).update(total=order.computed)
            updated += 1
    return updated
