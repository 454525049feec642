"""Labels are bounded where they are recorded: a megabyte task id, path or thread name never makes a
megabyte exception, log line or snapshot."""

from __future__ import annotations

import threading

import pytest
from django.db import connections

from django_poolguard import PoolExhausted
from django_poolguard.engine.context import (
    LABEL_CHARS,
    checkout_context,
    current_context,
    reset_context,
    set_context,
)
from django_poolguard.engine.pool import get_pool
from django_poolguard.fleet.snapshots import checkout_snapshot

pytestmark = pytest.mark.django_db(transaction=True)

HUGE = "x" * 1_000_000


def hold(alias: str, label: str | None, name: str, held: threading.Event, release: threading.Event) -> None:
    def run() -> None:
        if label is None:
            connections[alias].ensure_connection()
        else:
            with checkout_context(label):
                connections[alias].ensure_connection()
        held.set()
        release.wait(30)
        connections[alias].close()

    threading.Thread(target=run, name=name, daemon=True).start()
    assert held.wait(10)


def test_a_huge_task_id_and_thread_name_keep_pool_exhausted_small(make_alias):
    alias = make_alias(pool={"min_size": 0, "max_size": 2, "timeout": 0.5})
    release = threading.Event()
    try:
        hold(alias, f"task shop.tasks.export[{HUGE}]", "worker", threading.Event(), release)
        hold(alias, None, f"thread-{HUGE}", threading.Event(), release)
        with pytest.raises(PoolExhausted) as caught:
            connections[alias].ensure_connection()
        message = str(caught.value)
        assert len(message) < 2_000, len(message)
        assert "held by task shop.tasks.export[xxx" in message and "…" in message
        pool = get_pool(alias)
        assert pool is not None
        for checkout in pool.ledger.checkouts():
            assert len(checkout.label) <= LABEL_CHARS + len("thread ")
            assert len(checkout_snapshot(checkout)["thread"]) <= LABEL_CHARS
    finally:
        release.set()


def test_set_context_bounds_a_huge_request_path():
    token = set_context(f"GET /{HUGE}")
    try:
        label = current_context()
        assert label is not None and len(label) == LABEL_CHARS and label.endswith("…")
        assert label.startswith("GET /xxx")
    finally:
        reset_context(token)
