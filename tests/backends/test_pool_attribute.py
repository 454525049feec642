"""A wrapper keeps its alias's pool as a plain attribute once found (Django reads ``pool`` eight
times per checkout): it must never go on using a pool the registry has let go of."""

from __future__ import annotations

import copy
import threading
from typing import Any

import pytest
from django.db import connections

from django_poolguard.engine.pool import get_pool, replace_pool

pytestmark = pytest.mark.django_db(transaction=True)


def _select_one(alias: str) -> Any:
    connection = connections[alias]
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        row = cursor.fetchone()
    connection.close()
    return row


def _in_thread(work: Any) -> Any:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(work())
        except BaseException as exc:  # handed to the test thread
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


def test_a_wrapper_keeps_the_pool_it_found(make_alias):
    alias = make_alias()
    wrapper = connections[alias]
    pool = wrapper.pool
    assert pool is get_pool(alias)
    assert wrapper.__dict__["pool"] is pool  # later reads are plain attribute reads
    assert _select_one(alias) == (1,)


def test_close_pool_in_one_thread_reaches_every_threads_wrapper(make_alias):
    alias = make_alias()
    # A second thread's wrapper checks out and keeps the pool; it stays alive for the test.
    event, done = threading.Event(), threading.Event()
    seen: dict[str, Any] = {}

    def other_thread() -> None:
        seen["first"] = _select_one(alias)
        seen["pool"] = connections[alias].pool
        event.set()
        done.wait(30)
        seen["after"] = _select_one(alias)  # after close_pool(): a new pool, not the closed one
        seen["pool_after"] = connections[alias].pool

    thread = threading.Thread(target=other_thread)
    thread.start()
    assert event.wait(30)
    old = seen["pool"]
    connections[alias].close_pool()
    assert old.closed
    done.set()
    thread.join(30)
    assert seen["after"] == (1,)
    assert seen["pool_after"] is not old
    assert seen["pool_after"] is get_pool(alias)
    assert _select_one(alias) == (1,)


def test_a_replaced_pool_is_let_go_by_the_wrappers(make_alias):
    alias = make_alias()
    assert _select_one(alias) == (1,)
    old = connections[alias].pool
    new = replace_pool(alias, old)  # what the slot check does to a wedged pool
    assert new is not None and new is not old
    assert connections[alias].pool is new
    assert _in_thread(lambda: connections[alias].pool) is new
    assert _select_one(alias) == (1,)


def test_a_copied_wrapper_resolves_its_own_pool(make_alias):
    alias = make_alias()
    wrapper = connections[alias]
    assert _select_one(alias) == (1,)
    duplicate = copy.copy(wrapper)
    assert "pool" not in duplicate.__dict__  # not among the wrappers told when the pool goes
    old = wrapper.pool
    wrapper.close_pool()
    assert duplicate.pool is not old
    assert duplicate.pool is get_pool(alias)


def test_a_wrapper_whose_options_say_no_pool_bypasses_the_alias_pool(make_alias):
    alias = make_alias()
    assert _select_one(alias) == (1,)
    unpooled = connections[alias].copy()
    unpooled.settings_dict["OPTIONS"]["pool"] = False
    assert unpooled.pool is None
    with unpooled.cursor() as cursor:
        cursor.execute("SELECT 2")
        assert cursor.fetchone() == (2,)
    unpooled.close()
