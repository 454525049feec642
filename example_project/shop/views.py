"""The shop's pages. Most are healthy; four carry the bugs of the seed incidents on purpose
(each one says so), so ``manage.py incident`` and the demo can show what poolguard does."""

from __future__ import annotations

import logging
import random
import threading
from decimal import Decimal

from django.db import OperationalError, connection, connections, transaction
from django.db.models import Count, Sum
from django.db.models.functions import TruncDay
from django.http import HttpRequest, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from psycopg.errors import QueryCanceled

from django_poolguard import current_alias, workload

from . import services
from .models import Category, Order, OrderLine, Payment, Product
from .tasks import send_receipt

logger = logging.getLogger("shop")


def index(request: HttpRequest):
    return render(request, "shop/index.html")


def product_list(request: HttpRequest) -> JsonResponse:
    """Fast: one query."""
    products = Product.objects.select_related("category").order_by("id")[:20]
    return JsonResponse(
        {
            "products": [
                {"id": p.id, "name": p.name, "category": p.category.name, "price": str(p.price)}
                for p in products
            ]
        }
    )


def products_by_category(request: HttpRequest) -> JsonResponse:
    """An N+1 listing (on purpose): one query per category and one per product's category,
    so each request holds its connection for a couple of hundred round trips."""
    data = []
    for category in Category.objects.order_by("id"):
        for product in category.products.order_by("id"):  # a query per category
            data.append({"name": product.name, "category": Category.objects.get(pk=product.category_id).name})
    return JsonResponse({"products": data})


@csrf_exempt
@require_POST
def checkout(request: HttpRequest) -> JsonResponse:
    """A short transaction: lock a product row, take stock, write the order; the receipt goes
    to Celery once the transaction has committed."""
    alias = current_alias()
    with transaction.atomic(using=alias):
        product = Product.objects.select_for_update().order_by("?").first()
        if product is None:
            return JsonResponse({"error": "no products; run manage.py demo --setup-only"}, status=409)
        quantity = random.randint(1, 3)
        product.stock = max(product.stock - quantity, 0)
        product.save(update_fields=["stock"])
        order = Order.objects.create(email="buyer@example.com", total=product.price * quantity)
        OrderLine.objects.create(order=order, product=product, quantity=quantity, price=product.price)
        transaction.on_commit(lambda: send_receipt.delay(order.pk), using=alias)
    return JsonResponse({"order": order.pk, "total": str(order.total)})


def revenue_report(request: HttpRequest) -> JsonResponse:
    """The Saturday-night report: slow (``?seconds=`` of server time), so it runs on the
    ``analytics`` workload, whose pool and statement_timeout are its own."""
    seconds = min(float(request.GET.get("seconds", "4")), 120.0)
    with workload("analytics"):
        try:
            return JsonResponse({"days": revenue_by_day(seconds)})
        except OperationalError as exc:
            if not isinstance(exc.__cause__, QueryCanceled):
                raise
            # PostgreSQL enforced the alias's statement_timeout: say so instead of a bare 500.
            logger.warning("Revenue report cancelled by the analytics statement_timeout: %s", exc)
            return JsonResponse({"error": "the report ran past its statement_timeout"}, status=504)


def revenue_by_day(seconds: float) -> list[dict[str, str]]:
    """Revenue per day; ``pg_sleep`` stands in for the full scan of a 12-million-row table."""
    with connections[current_alias()].cursor() as cursor:
        cursor.execute("SELECT pg_sleep(%s)", [seconds])
    rows = (
        Order.objects.annotate(day=TruncDay("created_at"))
        .values("day")
        .annotate(orders=Count("id"), revenue=Sum("total"))
        .order_by("-day")[:30]
    )
    return [
        {"day": r["day"].date().isoformat(), "orders": str(r["orders"]), "revenue": str(r["revenue"])}
        for r in rows
    ]


@csrf_exempt
@require_POST
def pay(request: HttpRequest) -> JsonResponse:
    """Hoarding (on purpose): the payment provider is called *inside* the transaction, so the
    connection sits idle in transaction for as long as the provider takes. ``?fixed=1`` calls
    it before the transaction instead (after a read: has this buyer paid before?), so only a
    transaction-scoped checkout gives the connection back during the call."""
    delay = min(float(request.GET.get("delay", "0.3")), 60.0)
    amount = Decimal("19.90")
    if request.GET.get("fixed") == "1":
        Order.objects.filter(email="buyer@example.com", status=Order.Status.PAID).exists()
        provider_ref = services.charge(amount, delay)  # no transaction open
        with transaction.atomic(using=current_alias()):
            order = Order.objects.create(email="buyer@example.com", total=amount, status=Order.Status.PAID)
            Payment.objects.create(order=order, provider_ref=provider_ref)
    else:
        with transaction.atomic(using=current_alias()):
            order = Order.objects.create(email="buyer@example.com", total=amount)
            provider_ref = services.charge(amount, delay)  # the slow external call, connection held
            order.status = Order.Status.PAID
            order.save(update_fields=["status"])
            Payment.objects.create(order=order, provider_ref=provider_ref)
    return JsonResponse({"order": order.pk, "payment": provider_ref})


@csrf_exempt
@require_POST
def notify(request: HttpRequest) -> JsonResponse:
    """Tells the warehouse about the latest order from a background thread. The thread's error
    path leaks its connection (on purpose): ``?fail=1`` makes the warehouse refuse."""
    fail = request.GET.get("fail") == "1"
    thread = threading.Thread(target=notify_warehouse, args=(fail,), name="warehouse-notify", daemon=True)
    thread.start()
    return JsonResponse({"queued": True}, status=202)


def notify_warehouse(fail: bool) -> None:
    order = Order.objects.order_by("-id").first()  # checks out a connection for this thread
    order_id = order.pk if order else 0
    try:
        services.notify_warehouse(order_id, fail)
    except services.WarehouseUnavailable as exc:
        logger.warning("Warehouse notification failed: %s", exc)
        return  # BUG (on purpose): this path forgets connection.close(); the thread's connection leaks
    connection.close()
