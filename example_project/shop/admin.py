from django.contrib import admin

from .models import Category, Order, OrderLine, Payment, Product


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ["name", "category", "price", "stock"]
    list_select_related = ["category"]


class OrderLineInline(admin.TabularInline):
    model = OrderLine
    extra = 0


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ["id", "email", "created_at", "total", "status", "receipt_sent"]
    list_filter = ["status", "receipt_sent"]
    inlines = [OrderLineInline]


admin.site.register(Category)
admin.site.register(Payment)
