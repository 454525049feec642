from django.conf import settings
from django.contrib import admin
from django.contrib.staticfiles.views import serve
from django.urls import include, path, re_path
from shop import views
from shop.metrics import metrics_view

urlpatterns = [
    path("", views.index, name="index"),
    path("products/", views.product_list, name="products"),
    path("products/by-category/", views.products_by_category, name="products-by-category"),
    path("checkout/", views.checkout, name="checkout"),
    path("reports/revenue/", views.revenue_report, name="revenue-report"),
    path("payments/pay/", views.pay, name="pay"),
    path("orders/notify/", views.notify, name="notify"),
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="metrics"),
]

# The demo runs gunicorn without a web server in front: let Django serve the admin's CSS and JS.
# (insecure=True is fine for a local demo; a real site serves static files from its web server.)
urlpatterns.append(re_path(r"^static/(?P<path>.*)$", serve, {"insecure": True}))

if settings.GUARDED:
    urlpatterns.append(path("poolguard/", include("django_poolguard.urls")))  # /poolguard/health/
