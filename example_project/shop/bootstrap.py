"""Make the shop's database ready from nothing: create it, migrate it, fill it, add the demo user."""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

import psycopg
from django.conf import settings
from django.core.management import call_command
from psycopg import sql

DEMO_USER = "admin"
DEMO_PASSWORD = "poolguard-demo"  # printed by the demo on purpose: a local toy, never a real site


def _maintenance_connection() -> psycopg.Connection[Any]:
    """A connection to the server's ``postgres`` database, to create and drop the shop's."""
    db = settings.DATABASES["default"]
    params: dict[str, Any] = {"dbname": "postgres", "user": db["USER"] or None, "host": db["HOST"] or None}
    if db.get("PORT"):
        params["port"] = db["PORT"]
    if db.get("PASSWORD"):
        params["password"] = db["PASSWORD"]
    return psycopg.connect(**{k: v for k, v in params.items() if v is not None}, autocommit=True)


def drop_database(name: str) -> None:
    """Drop a database a replay created for itself (never the demo's)."""
    with _maintenance_connection() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def ensure_database() -> bool:
    """Create the shop's database if it is missing; True when it was created."""
    db = settings.DATABASES["default"]
    with _maintenance_connection() as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [db["NAME"]]).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db["NAME"])))
            return True
    return False


def prepare(*, verbosity: int = 0) -> None:
    """Database, migrations, catalogue and demo superuser, each only if missing."""
    ensure_database()
    call_command("migrate", verbosity=verbosity, interactive=False)
    seed_catalogue()
    ensure_superuser()


def seed_catalogue(categories: int = 8, per_category: int = 12, orders: int = 200) -> None:
    from .models import Category, Order, OrderLine, Product

    if Product.objects.exists():
        return
    rng = random.Random(8)
    for c in range(categories):
        category = Category.objects.create(name=f"Category {c + 1}")
        Product.objects.bulk_create(
            Product(
                name=f"Product {c + 1}.{p + 1}",
                category=category,
                price=Decimal(rng.randint(100, 9900)) / 100,
            )
            for p in range(per_category)
        )
    products = list(Product.objects.all())
    for _ in range(orders):
        product = rng.choice(products)
        quantity = rng.randint(1, 3)
        order = Order.objects.create(email="seed@example.com", total=product.price * quantity, status="paid")
        OrderLine.objects.create(order=order, product=product, quantity=quantity, price=product.price)


def close_pools() -> None:
    """Close this process's pools before the interpreter exits: a pool left to the garbage
    collector at shutdown cannot join its threads (psycopg_pool warns on Python 3.13)."""
    from django.db import connections

    for alias in connections:
        connections[alias].close()
        close_pool = getattr(connections[alias], "close_pool", None)
        if close_pool is not None:
            close_pool()


def ensure_superuser() -> None:
    from django.contrib.auth import get_user_model

    user_model = get_user_model()
    user = user_model.objects.filter(username=DEMO_USER).first()
    if user is None:
        user_model.objects.create_superuser(DEMO_USER, "admin@example.com", DEMO_PASSWORD)
