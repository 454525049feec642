"""Shared fixtures: fresh pooled aliases on the test database, so tests that change pool
state never bleed into each other."""

from __future__ import annotations

import copy
import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connections

from django_poolguard.engine.pool import discard_pool

_counter = itertools.count()


@pytest.fixture
def make_alias(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Callable[..., str]]:
    """``make_alias(pool={...}, poolguard={...})`` adds a guarded alias on the test database.

    The alias gets its own pool; it is closed and removed after the test. Use it from
    tests marked ``django_db(transaction=True)`` (the pool's sessions are not the test's
    transaction).
    """
    created: list[str] = []

    def make(pool: dict[str, Any] | None = None, poolguard: dict[str, Any] | None = None, **keys: Any) -> str:
        alias = f"pg_{next(_counter)}"
        base = copy.deepcopy(connections["default"].settings_dict)
        base["OPTIONS"] = {
            "pool": {"min_size": 0, "max_size": 2, "timeout": 2} if pool is None else pool,
            "poolguard": poolguard or {},
        }
        base.update(keys)
        connections.settings[alias] = base
        created.append(alias)
        return alias

    with django_db_blocker.unblock():
        yield make
        for alias in created:
            if hasattr(connections._connections, alias):
                connections[alias].close()
                delattr(connections._connections, alias)
            pool = discard_pool(alias)
            if pool is not None:
                pool.close(timeout=1)
            connections.settings.pop(alias, None)


@pytest.fixture
def fast_watchdog(settings: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A watchdog scanning every 0.1 s, and poolguard's INFO lines captured, for leak tests."""
    settings.POOLGUARD = {**settings.POOLGUARD, "MONITOR_INTERVAL": 0.1}
    caplog.set_level(logging.INFO, logger="django_poolguard")


class Holder(threading.Thread):
    """A thread that checks out a connection on ``alias`` in ``hold_connection`` and keeps it
    until ``release()``; its stack is what leak reports must name."""

    def __init__(self, alias: str, name: str = "holder", close: bool = True) -> None:
        super().__init__(name=name, daemon=True)
        self.alias = alias
        self.close_at_end = close
        self.holding = threading.Event()
        self._release = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.hold_connection()
        except BaseException as exc:  # reported to the test through .error
            self.error = exc
            self.holding.set()

    def hold_connection(self) -> None:
        with connections[self.alias].cursor() as cursor:
            cursor.execute("SELECT 1")
        self.holding.set()
        self._release.wait(30)
        if self.close_at_end:
            connections[self.alias].close()

    def release(self) -> None:
        self._release.set()
        self.join(10)


@pytest.fixture
def holders() -> Iterator[Callable[..., Holder]]:
    """Start :class:`Holder` threads; all are released at the end of the test."""
    started: list[Holder] = []

    def start(alias: str, name: str = "holder", close: bool = True) -> Holder:
        holder = Holder(alias, name=name, close=close)
        holder.start()
        assert holder.holding.wait(10), "the holder never got a connection"
        if holder.error:
            raise holder.error
        started.append(holder)
        return holder

    yield start
    for holder in started:
        holder.release()
