"""``path("poolguard/", include("django_poolguard.urls"))``."""

from __future__ import annotations

from django.urls import path

from django_poolguard import views

app_name = "poolguard"

urlpatterns = [
    path("health/", views.health_view, name="health"),
]
