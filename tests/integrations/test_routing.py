"""WorkloadRouter and workload(): each workload's queries go through its own alias's pool."""

from __future__ import annotations

import asyncio
import threading

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, router, transaction
from django.test import override_settings

import django_poolguard
from django_poolguard import current_alias, workload
from django_poolguard.integrations.workloads import current_workload
from django_poolguard.routers import WorkloadRouter, same_database
from tests.testapp.models import Item

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "worker"])


def application_name(alias: str) -> str:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT current_setting('application_name')")
        return cursor.fetchone()[0]


def test_public_names_are_exported():
    assert django_poolguard.workload is workload
    assert django_poolguard.current_alias is current_alias
    assert {"workload", "current_alias", "current_workload"} <= set(django_poolguard.__all__)


def test_requests_use_the_web_alias_by_default():
    assert current_workload() == "web"
    assert current_alias() == "default"
    assert router.db_for_read(Item) == "default"
    assert router.db_for_write(Item) == "default"


def test_workload_block_routes_orm_queries_to_its_alias():
    with workload("worker"):
        assert current_alias() == "worker"
        Item.objects.create(name="from the worker pool")
        item = Item.objects.get(name="from the worker pool")
        assert item._state.db == "worker"
        # The query really ran on the worker pool's session.
        assert application_name("worker").startswith("worker:worker:")
    assert current_alias() == "default"
    assert Item.objects.get(name="from the worker pool")._state.db == "default"


def test_workload_as_decorator_and_nesting():
    @workload("worker")
    def in_worker():
        inner = current_alias()
        with workload("web"):
            nested = current_alias()
        return inner, nested, current_alias()

    assert in_worker() == ("worker", "default", "worker")
    assert current_alias() == "default"


def test_workload_is_per_thread():
    seen = {}
    inside = threading.Event()
    done = threading.Event()

    def other_thread():
        seen["other"] = current_alias()
        inside.set()
        done.wait(5)

    with workload("worker"):
        thread = threading.Thread(target=other_thread)
        thread.start()
        inside.wait(5)
        seen["mine"] = current_alias()
        done.set()
        thread.join(5)
    assert seen == {"other": "default", "mine": "worker"}


def test_workload_decorates_coroutines():
    @workload("worker")
    async def job():
        await asyncio.sleep(0)
        return current_alias()

    assert asyncio.run(job()) == "worker"


def test_unknown_workload_is_a_clear_error():
    with pytest.raises(ImproperlyConfigured, match=r"POOLGUARD\['WORKLOADS'\].*'analytics'"):
        with workload("analytics"):
            pass


def test_workload_without_its_own_alias_falls_back_to_web():
    with override_settings(POOLGUARD={"WORKLOADS": {"web": "default"}}):
        from django_poolguard.integrations.workloads import enter, leave

        token = enter("worker")
        try:
            assert current_alias() == "default"
        finally:
            leave(token)


def test_atomic_needs_current_alias_in_a_worker_workload():
    """The documented pitfall: atomic() defaults to 'default'; atomic(using=current_alias()) is right."""
    with workload("worker"):
        with transaction.atomic():
            Item.objects.create(name="outside the atomic block")
            assert not connections["worker"].in_atomic_block
        with transaction.atomic(using=current_alias()):
            Item.objects.create(name="inside")
            assert connections["worker"].in_atomic_block


def test_sibling_aliases_are_one_database():
    assert same_database("default", "worker")
    with workload("worker"):
        worker_item = Item.objects.create(name="w")
    web_item = Item.objects.get(pk=worker_item.pk)
    assert WorkloadRouter().allow_relation(worker_item, web_item) is True


def test_migrations_run_through_the_primary_alias_only():
    assert router.allow_migrate("default", "testapp", model_name="item") is True
    assert router.allow_migrate("worker", "testapp", model_name="item") is False


def test_instance_in_another_database_is_left_alone(make_alias):
    other = make_alias(NAME="somewhere_else")
    item = Item(name="x")
    item._state.db = other
    assert WorkloadRouter().db_for_write(Item, instance=item) is None
    item._state.db = "worker"
    assert WorkloadRouter().db_for_write(Item, instance=item) == "default"


@pytest.mark.parametrize("bad", [{"web": ["default"]}, {"web": {"alias": "default"}}, {"web": None}])
def test_a_malformed_workloads_setting_routes_to_default_instead_of_crashing(bad):
    # Django's own model checks (6.1) ask the router; check E006 names the bad value.
    with override_settings(POOLGUARD={"WORKLOADS": bad}):
        assert router.db_for_read(Item) == "default"
        assert router.allow_migrate("default", "testapp", model_name="item") is True
