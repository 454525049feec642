"""Django's ``@async_unsafe`` check on the wrapper's methods, made without raising an exception:
the same rule, exception, message and ``DJANGO_ALLOW_ASYNC_UNSAFE`` escape as Django's, on every
method Django guards, and none of them left paying Django's raising check on a checkout."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from django.core.exceptions import SynchronousOnlyOperation
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.postgresql import base as postgresql

from django_poolguard._compat import ASYNC_UNSAFE_CODE, async_unsafe_parts
from django_poolguard.backends.postgresql.async_check import ASYNC_UNSAFE_METHODS
from django_poolguard.backends.postgresql.base import DatabaseWrapper, TransactionReleasingWrapper

pytestmark = pytest.mark.django_db(transaction=True)

# Arguments each method takes (the check comes before any of them is looked at).
ARGUMENTS: dict[str, tuple[Any, ...]] = {
    "get_new_connection": ({},),
    "savepoint_rollback": ("s1",),
    "savepoint_commit": ("s1",),
}


def _raised(method: Any, wrapper: Any, name: str) -> tuple[type[BaseException], str] | None:
    async def call() -> None:
        method(wrapper, *ARGUMENTS.get(name, ()))

    try:
        asyncio.run(call())
    except BaseException as exc:
        return type(exc), str(exc)
    return None


def guarded_by_django() -> list[str]:
    return [
        name
        for name in dir(postgresql.DatabaseWrapper)
        if async_unsafe_parts(getattr(postgresql.DatabaseWrapper, name, None))
    ]


@pytest.mark.parametrize("wrapper_class", [DatabaseWrapper, TransactionReleasingWrapper])
def test_no_method_pays_djangos_raising_check(wrapper_class):
    assert set(guarded_by_django()) <= set(ASYNC_UNSAFE_METHODS)
    for name in dir(wrapper_class):
        assert getattr(getattr(wrapper_class, name, None), "__code__", None) is not ASYNC_UNSAFE_CODE, name


@pytest.mark.parametrize("name", guarded_by_django())
def test_inside_an_event_loop_each_method_refuses_as_djangos_does(make_alias, name):
    wrapper = connections[make_alias()]
    djangos = _raised(getattr(postgresql.DatabaseWrapper, name), wrapper, name)
    ours = _raised(getattr(type(wrapper), name), wrapper, name)
    assert djangos is not None and djangos[0] is SynchronousOnlyOperation
    assert ours == djangos
    assert wrapper.connection is None  # refused before touching anything


@pytest.mark.parametrize("name", guarded_by_django())
def test_a_call_with_the_wrong_arguments_fails_as_djangos_does(make_alias, name):
    """Methods that take only ``self`` get a wrapper without ``*args``: a bad call still gets
    Django's own ``TypeError``, naming Django's method."""
    wrapper = connections[make_alias()]
    arguments = ARGUMENTS.get(name, ())
    for bad in [(*arguments, "extra", "more")] + ([()] if arguments else []):
        errors = []
        for method in (getattr(postgresql.DatabaseWrapper, name), getattr(type(wrapper), name)):
            with pytest.raises(TypeError) as raised:
                method(wrapper, *bad)
            errors.append(str(raised.value))
        assert errors[0] == errors[1], name
    assert wrapper.connection is None


def test_the_releasing_wrappers_connect_refuses_before_touching_its_state(make_alias):
    alias = make_alias(poolguard={"release": "transaction"})
    wrapper = connections[alias]
    assert isinstance(wrapper, TransactionReleasingWrapper)
    wrapper._guard_pinned = "marker"
    assert _raised(type(wrapper).connect, wrapper, "connect") == _raised(
        postgresql.DatabaseWrapper.connect, wrapper, "connect"
    )
    assert wrapper._guard_pinned == "marker"


def test_django_allow_async_unsafe_lets_a_query_run_inside_a_loop(make_alias, monkeypatch):
    alias = make_alias()

    async def query() -> Any:
        wrapper = connections[alias]
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT 41 + 1")
            row = cursor.fetchone()
        wrapper.close()
        return row

    with pytest.raises(SynchronousOnlyOperation):
        asyncio.run(query())
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    assert asyncio.run(query()) == (42,)


@pytest.mark.parametrize(
    "target",
    [
        "django.db.backends.base.base.BaseDatabaseWrapper.connect",
        "django.db.backends.base.base.BaseDatabaseWrapper.ensure_connection",
        "django.db.backends.postgresql.base.DatabaseWrapper.get_new_connection",
        "django.db.backends.postgresql.base.DatabaseWrapper.create_cursor",
    ],
)
def test_a_patch_of_djangos_method_is_the_one_called(make_alias, target):
    """As Django's own tests do: patching Django's method patches poolguard's wrapper too."""
    from unittest import mock

    alias = make_alias()
    module, _, attribute = target.rpartition(".")
    owner = BaseDatabaseWrapper if module.endswith("BaseDatabaseWrapper") else postgresql.DatabaseWrapper
    original = getattr(owner, attribute)
    calls: list[str] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(attribute)
        return original(*args, **kwargs)

    with mock.patch(target, side_effect=spy, autospec=True):
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT 1")
        connections[alias].close()
    assert attribute in calls
    seen = len(calls)
    with connections[alias].cursor() as cursor:  # unpatched again: Django's function, checked cheaply
        cursor.execute("SELECT 1")
    connections[alias].close()
    assert len(calls) == seen
