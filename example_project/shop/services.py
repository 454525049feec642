"""Fake third-party APIs: slow or failing on demand, so the incidents can be replayed."""

from __future__ import annotations

import time
import uuid
from decimal import Decimal


class WarehouseUnavailable(Exception):
    """The warehouse API answered 503."""


def charge(amount: Decimal, delay: float) -> str:
    """The payment provider: answers after ``delay`` seconds (it gets slow under load)."""
    time.sleep(delay)
    return f"pay_{uuid.uuid4().hex[:16]}"


def notify_warehouse(order_id: int, fail: bool) -> None:
    """The warehouse API: fails when ``fail`` (its bad days)."""
    time.sleep(0.05)
    if fail:
        raise WarehouseUnavailable(f"warehouse refused order {order_id}: 503 Service Unavailable")
