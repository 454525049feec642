"""A tiny catalogue and order book: enough tables for fast pages, a transaction and a slow report."""

from __future__ import annotations

from django.db import models


class Category(models.Model):
    name = models.CharField(max_length=80, unique=True)

    class Meta:
        verbose_name_plural = "categories"

    def __str__(self) -> str:
        return self.name


class Product(models.Model):
    name = models.CharField(max_length=120)
    category = models.ForeignKey(Category, on_delete=models.PROTECT, related_name="products")
    price = models.DecimalField(max_digits=9, decimal_places=2)
    stock = models.PositiveIntegerField(default=100)

    def __str__(self) -> str:
        return self.name


class Order(models.Model):
    class Status(models.TextChoices):
        NEW = "new"
        PAID = "paid"
        FAILED = "failed"

    email = models.EmailField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    total = models.DecimalField(max_digits=11, decimal_places=2, default=0)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.NEW)
    receipt_sent = models.BooleanField(default=False)

    def __str__(self) -> str:
        return f"order #{self.pk} ({self.status})"


class OrderLine(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="lines")
    product = models.ForeignKey(Product, on_delete=models.PROTECT)
    quantity = models.PositiveIntegerField()
    price = models.DecimalField(max_digits=9, decimal_places=2)

    def __str__(self) -> str:
        return f"{self.quantity} x product #{self.product_id}"


class Payment(models.Model):
    order = models.OneToOneField(Order, on_delete=models.CASCADE, related_name="payment")
    provider_ref = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.provider_ref
