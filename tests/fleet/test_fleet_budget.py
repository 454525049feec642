"""A pool under a fleet budget, in this process, against the real lease stores: it never opens more
than its lease, gives idle connections back when another process joins, regrows when it leaves,
and runs on a static share while the store is unreachable."""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connections
from django.test import override_settings

from django_poolguard.engine.pool import get_pool
from django_poolguard.exceptions import PoolExhausted
from django_poolguard.fleet import leases
from django_poolguard.fleet.lease_stores import DatabaseLeaseStore
from django_poolguard.web.health import health
from tests.fleet_helpers import redis_url

pytestmark = pytest.mark.django_db(transaction=True)

INTERVAL = 0.3  # PUBLISH_INTERVAL: the keeper's heartbeat


@pytest.fixture
def fast_heartbeat(settings: Any) -> Iterator[None]:
    settings.POOLGUARD = {**settings.POOLGUARD, "PUBLISH_INTERVAL": INTERVAL, "PUBLISH": None}
    yield
    leases.release_all()


def eventually(condition: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


def sessions(alias: str) -> int:
    """The alias's pool sessions on the server (``web:<alias>:...``), not its side connection
    (``poolguard:<alias>:...``)."""
    from django_poolguard.engine.side_connection import side_cursor

    with side_cursor("default") as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s", [f"web:{alias}:%"]
        )
        row = cursor.fetchone()
    assert row is not None
    return int(row[0])


class Holders:
    """Threads that each hold one connection of ``alias`` until released."""

    def __init__(self, alias: str, count: int) -> None:
        self.alias = alias
        self.release = threading.Event()
        self.got = 0
        self.failed = 0
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._hold, daemon=True) for _ in range(count)]
        for thread in self.threads:
            thread.start()

    def _hold(self) -> None:
        try:
            with connections[self.alias].cursor() as cursor:
                cursor.execute("SELECT 1")
            with self._lock:
                self.got += 1
            self.release.wait(30)
        except PoolExhausted:
            with self._lock:
                self.failed += 1
        finally:
            connections[self.alias].close()

    def stop(self) -> None:
        self.release.set()
        for thread in self.threads:
            thread.join(30)


def test_a_pool_never_opens_more_than_its_lease(make_alias, fast_heartbeat):
    alias = make_alias(
        pool={"min_size": 0, "max_size": 8, "timeout": 3}, poolguard={"fleet_budget": 3, "workload": "web"}
    )
    store = DatabaseLeaseStore(alias)
    holders = Holders(alias, 6)
    try:
        eventually(lambda: holders.got == 3, "3 holders served")
        pool = get_pool(alias)
        assert pool is not None
        peak = 0
        until = time.monotonic() + 1.5  # the waiters keep asking: the cap must hold all along
        while time.monotonic() < until:
            peak = max(peak, sessions(alias), pool.get_stats()["pool_size"])
            time.sleep(0.05)
        assert peak == 3 and holders.got == 3
        lease = leases.lease_snapshot(alias)
        assert lease is not None and lease["lease"] == 3 and lease["budget"] == 3
        assert lease["capped"] == "capped at 3 by fleet budget 3 over 1 processes"
        # The store agrees: nobody else can take anything.
        assert store.exchange(leases.keeper(alias).key, "someone-else", 2, 0, 3, 5).lease == 0  # type: ignore[union-attr]
    finally:
        holders.stop()
    assert holders.got + holders.failed == 6


def test_a_joining_process_takes_idle_connections_back_and_leaving_lets_the_pool_regrow(
    make_alias, fast_heartbeat
):
    alias = make_alias(
        pool={"min_size": 4, "max_size": 4, "timeout": 3}, poolguard={"fleet_budget": 4, "workload": "web"}
    )
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")
    connections[alias].close()
    pool = get_pool(alias)
    assert pool is not None
    eventually(lambda: pool.get_stats()["pool_size"] == 4 and sessions(alias) == 4, "4 connections open")
    keeper = leases.keeper(alias)
    assert keeper is not None
    store, key = keeper.store, keeper.key
    # Another process joins and keeps renewing: the first gives back 2 idle connections.
    stop = threading.Event()
    other: list[int] = []

    def renew() -> None:
        while not stop.is_set():
            other.append(store.exchange(key, "joiner", 2, 0, 4, 3 * INTERVAL).lease)
            stop.wait(INTERVAL)

    joiner = threading.Thread(target=renew, daemon=True)
    joiner.start()
    try:
        eventually(lambda: other and other[-1] == 2, "the joiner leased its share of 2")
        assert pool.get_stats()["pool_size"] <= 2
        eventually(lambda: sessions(alias) == 2, "the first pool closed 2 idle connections")
        snapshot = leases.lease_snapshot(alias)
        assert snapshot is not None and snapshot["members"] == 2 and snapshot["share"] == 2
    finally:
        stop.set()
        joiner.join(10)
    store.release(key, "joiner")
    eventually(lambda: pool.get_stats()["pool_size"] == 4, "the pool regrew to min_size once alone")
    eventually(lambda: sessions(alias) == 4, "4 sessions again")


def test_a_busy_connection_is_never_taken_back(make_alias, fast_heartbeat):
    alias = make_alias(
        pool={"min_size": 0, "max_size": 4, "timeout": 3}, poolguard={"fleet_budget": 4, "workload": "web"}
    )
    holders = Holders(alias, 3)
    try:
        eventually(lambda: holders.got == 3, "3 holders served")
        keeper = leases.keeper(alias)
        assert keeper is not None
        # A second owner arrives wanting its share (2): the first holds its whole lease of 4.
        assert keeper.store.exchange(keeper.key, "joiner", 2, 0, 4, 30).lease == 0
        # The first gives back the one connection it does not use, never the three busy ones.
        eventually(
            lambda: keeper.store.exchange(keeper.key, "joiner", 2, 0, 4, 30).lease == 1,
            "the unused lease is given back",
        )
        time.sleep(4 * INTERVAL)
        assert sessions(alias) == 3 and holders.failed == 0
        renewed = keeper.store.exchange(keeper.key, "joiner", 2, 1, 4, 30)
        assert renewed.lease == 1 and renewed.fleet_held == 4
    finally:
        holders.stop()
    keeper = leases.keeper(alias)
    assert keeper is not None
    eventually(
        lambda: keeper.store.exchange(keeper.key, "joiner", 2, 1, 4, 30).lease == 2,
        "returned connections are given back",
    )
    keeper.store.release(keeper.key, "joiner")


def test_a_min_size_that_does_not_fit_runs_with_fewer_and_says_so(make_alias, fast_heartbeat, caplog):
    caplog.set_level(logging.WARNING, logger="django_poolguard")
    alias = make_alias(
        pool={"min_size": 4, "max_size": 4, "timeout": 3}, poolguard={"fleet_budget": 2, "workload": "web"}
    )
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")
    connections[alias].close()
    pool = get_pool(alias)
    assert pool is not None
    eventually(lambda: sessions(alias) == 2, "2 connections open")
    time.sleep(3 * INTERVAL)
    assert pool.get_stats()["pool_size"] == 2 and sessions(alias) == 2
    said = [r.getMessage() for r in caplog.records if "below its min_size of 4" in r.getMessage()]
    assert len(said) == 1 and f"alias {alias!r} runs with 2 connection(s)" in said[0]


def test_database_store_outage_falls_back_to_a_static_share_and_recovers(make_alias, settings, caplog):
    caplog.set_level(logging.INFO, logger="django_poolguard")
    settings.POOLGUARD = {
        **settings.POOLGUARD,
        "PUBLISH_INTERVAL": INTERVAL,
        "PUBLISH": None,
        "DEPLOYMENT": {"web": {"instances": 2, "processes": 2}},
    }
    alias = make_alias(
        pool={"min_size": 0, "max_size": 6, "timeout": 3}, poolguard={"fleet_budget": 8, "workload": "web"}
    )
    try:
        holders = Holders(alias, 6)
        eventually(lambda: holders.got == 6, "6 holders served under a lease of 6")
        holders.stop()
        with connections["default"].cursor() as cursor:
            cursor.execute("ALTER TABLE poolguard_lease RENAME TO poolguard_lease_away")
        try:
            # Static share: 8 // (2 x 2) = 2; idle connections above it close.
            eventually(lambda: (leases.lease_snapshot(alias) or {}).get("fallback"), "fallback")
            eventually(lambda: sessions(alias) == 2, "the pool shrank to its static share")
            report = health()["aliases"][alias]
            assert report["status"] == "warning" and report["lease"]["fallback"] is True
            assert report["lease"]["lease"] == 2
            time.sleep(3 * INTERVAL)
        finally:
            with connections["default"].cursor() as cursor:
                cursor.execute("ALTER TABLE poolguard_lease_away RENAME TO poolguard_lease")
        eventually(lambda: not (leases.lease_snapshot(alias) or {"fallback": True})["fallback"], "recovery")
        messages = [r.getMessage() for r in caplog.records]
        lost = [m for m in messages if "cannot reach the database lease store" in m]
        back = [m for m in messages if "reaches the database lease store" in m and alias in m]
        assert len([m for m in lost if alias in m]) == 1 and "manage.py migrate django_poolguard" in lost[0]
        assert len(back) == 1
        assert health()["aliases"][alias]["status"] == "healthy"
    finally:
        leases.release_all()


class Forwarder:
    """A TCP forwarder to Redis that can be stopped and restarted on the same port: an outage."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.server: socket.socket | None = None
        self.sockets: list[socket.socket] = []

    def start(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(16)
        self.server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        if self.server is not None:
            try:
                self.server.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close() alone does not)
            except OSError:
                pass
            self.server.close()
            self.server = None
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass
        self.sockets = []


def test_cache_store_outage_falls_back_to_a_static_share_and_recovers(make_alias, settings, caplog):
    url = redis_url()
    if url is None:
        pytest.skip("no Redis at REDIS_URL")
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    forwarder = Forwarder((parts.hostname or "127.0.0.1", parts.port or 6379))
    forwarder.start()
    caplog.set_level(logging.INFO, logger="django_poolguard")
    settings.POOLGUARD = {**settings.POOLGUARD, "PUBLISH_INTERVAL": INTERVAL, "PUBLISH": None}
    caches = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "leases": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{forwarder.port}/0",
            "KEY_PREFIX": f"poolguard-tests-{uuid.uuid4().hex[:8]}",
            "OPTIONS": {"socket_timeout": 1, "socket_connect_timeout": 1},
        },
    }
    try:
        with override_settings(CACHES=caches):
            alias = make_alias(
                pool={"min_size": 3, "max_size": 3, "timeout": 3},
                poolguard={
                    "fleet_budget": 6,
                    "workload": "web",
                    "lease_store": "cache",
                    "lease_cache": "leases",
                },
            )
            with connections[alias].cursor() as cursor:
                cursor.execute("SELECT 1")
            connections[alias].close()
            eventually(lambda: sessions(alias) == 3, "3 connections under a cache lease")
            lease = leases.lease_snapshot(alias)
            assert lease is not None and lease["store"] == "cache" and not lease["fallback"]
            forwarder.stop()
            eventually(lambda: (leases.lease_snapshot(alias) or {}).get("fallback"), "fallback")
            # No DEPLOYMENT: the static share is min_size (3), so nothing has to close.
            assert (leases.lease_snapshot(alias) or {}).get("lease") == 3
            assert health()["aliases"][alias]["status"] == "warning"
            time.sleep(3 * INTERVAL)
            forwarder.start()
            eventually(
                lambda: not (leases.lease_snapshot(alias) or {"fallback": True})["fallback"], "recovery"
            )
            messages = [r.getMessage() for r in caplog.records if alias in r.getMessage()]
            assert len([m for m in messages if "cannot reach the cache lease store" in m]) == 1
            assert len([m for m in messages if "reaches the cache lease store" in m]) == 1
            assert not [m for m in messages if "redis://" in m]
            leases.release_all()
    finally:
        forwarder.stop()


def test_a_replaced_pool_keeps_the_current_lease(make_alias, fast_heartbeat):
    from django_poolguard.engine.pool import replace_pool

    alias = make_alias(
        pool={"min_size": 0, "max_size": 6, "timeout": 3}, poolguard={"fleet_budget": 2, "workload": "web"}
    )
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")
    connections[alias].close()
    pool = get_pool(alias)
    assert pool is not None and pool.lease_limit == 2
    fresh = replace_pool(alias, pool)  # as the slot check does with a wedged pool
    assert fresh is not None and fresh is not pool
    assert fresh.lease_limit == 2 and fresh.max_size == 2 and fresh.size_limit() == 2
    holders = Holders(alias, 4)
    try:
        eventually(lambda: holders.got == 2, "2 holders served by the new pool")
        time.sleep(3 * INTERVAL)
        assert fresh.get_stats()["pool_size"] <= 2 and holders.got == 2
    finally:
        holders.stop()


def _forked_child(alias: str, parent_owner: str, queue: Any) -> None:
    try:
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT 1")
        keeper = leases.keeper(alias)
        queue.put(
            {
                "owner": keeper.owner if keeper is not None else None,
                "lease": keeper.limit if keeper is not None else None,
                "members": keeper.members if keeper is not None else None,
            }
        )
        connections[alias].close()
    except BaseException as exc:  # pragma: no cover - reported to the parent
        queue.put({"error": repr(exc)})


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_takes_a_lease_of_its_own(make_alias, fast_heartbeat):
    import multiprocessing

    alias = make_alias(
        pool={"min_size": 0, "max_size": 4, "timeout": 5}, poolguard={"fleet_budget": 4, "workload": "web"}
    )
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")
    connections[alias].close()
    parent = leases.keeper(alias)
    assert parent is not None
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_forked_child, args=(alias, parent.owner, queue))
    child.start()
    result = queue.get(timeout=60)
    child.join(60)
    assert "error" not in result, result
    # Its own owner (a new token after fork), and the store counted the parent too.
    assert result["owner"] not in (None, parent.owner) and result["members"] == 2
    assert child.exitcode == 0
    # multiprocessing ends the child with os._exit (no exit hooks): its lease expires, the parent's stays.
    eventually(
        lambda: leases.keeper(alias) is parent and (leases.lease_snapshot(alias) or {}).get("members") == 1,
        "the child's lease expired while the parent's lives on",
    )


def test_auto_resolves_the_budget_from_the_server(make_alias, fast_heartbeat):
    from django_poolguard.fleet.budget import auto_budget

    alias = make_alias(
        pool={"min_size": 0, "max_size": 3, "timeout": 3},
        poolguard={"fleet_budget": "auto", "workload": "web"},
    )
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")
    connections[alias].close()
    lease = leases.lease_snapshot(alias)
    assert lease is not None and lease["budget"] == auto_budget(alias) >= 1
    assert lease["lease"] == min(3, lease["budget"]) and not lease["fallback"]
