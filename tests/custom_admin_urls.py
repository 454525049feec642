"""A project with its own AdminSite (``ops``) instead of ``admin.site``."""

from django.contrib.admin import AdminSite
from django.urls import path

from django_poolguard.admin import LeakEventAdmin, PoolAdmin
from django_poolguard.models import LeakEvent, Pool

ops_site = AdminSite(name="ops")
ops_site.register(Pool, PoolAdmin)
ops_site.register(LeakEvent, LeakEventAdmin)

urlpatterns = [path("ops/", ops_site.urls)]
