"""Priority admission: the reserve, the serving order, aging, classification and its checks.

Real threads check out real connections from small pools on the test database.
"""

from __future__ import annotations

import copy
import logging
import threading
import time

import pytest
from django.conf import settings
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.test import override_settings

from django_poolguard import PoolExhausted, current_priority, priority
from django_poolguard.engine.pool import get_pool
from django_poolguard.exceptions import PoolQueueFull

pytestmark = pytest.mark.django_db(transaction=True)


class Client(threading.Thread):
    """Checks out a connection on ``alias`` in class ``klass``; notes when it is served in
    ``served``, holds it ``hold`` seconds (or until ``release()``), then gives it back."""

    def __init__(self, alias: str, klass: str, served: list[str] | None = None, hold: float | None = None):
        super().__init__(name=f"{klass}-client", daemon=True)
        self.alias, self.klass, self.hold = alias, klass, hold
        self.served = served if served is not None else []
        self.got = threading.Event()
        self.done = threading.Event()
        self._release = threading.Event()
        self.error: BaseException | None = None
        self.waited = 0.0

    def run(self) -> None:
        started = time.monotonic()
        try:
            with priority(self.klass):
                with connections[self.alias].cursor() as cursor:
                    cursor.execute("SELECT 1")
                self.waited = time.monotonic() - started
                self.served.append(self.name)
                self.got.set()
                self._release.wait(30 if self.hold is None else self.hold)
        except BaseException as exc:  # reported to the test
            self.error = exc
            self.waited = time.monotonic() - started
        finally:
            connections[self.alias].close()
            self.done.set()

    def release(self) -> None:
        self._release.set()
        self.join(10)


@pytest.fixture
def clients():
    started: list[Client] = []

    def start(alias: str, klass: str, **kwargs) -> Client:
        client = Client(alias, klass, **kwargs)
        client.start()
        started.append(client)
        return client

    yield start
    for client in started:
        client.release()


def _until(condition, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the condition never came true"
        time.sleep(0.005)


def _holding(client: Client) -> Client:
    assert client.got.wait(10), f"{client.name} got no connection: {client.error!r}"
    return client


def test_without_a_reserve_the_pool_has_no_gate(make_alias):
    alias = make_alias()
    connections[alias].ensure_connection()
    try:
        from django_poolguard.engine.pool import GuardedPool

        pool = get_pool(alias)
        assert type(pool) is GuardedPool and pool.admission is None, (
            "exactly the pool of an alias without priorities"
        )
        assert type(pool._waiting).__name__ == "deque", "psycopg_pool's own queue, untouched"
    finally:
        connections[alias].close()


def test_low_is_refused_at_once_when_only_reserved_connections_are_free(make_alias, clients):
    alias = make_alias(
        pool={"min_size": 0, "max_size": 4, "timeout": 3},
        poolguard={"reserve": {"critical": 1, "normal": 1}},
    )
    _holding(clients(alias, "low"))  # 4 free > 2: admitted
    _holding(clients(alias, "normal"))  # 3 free > 1

    started = time.monotonic()
    with priority("low"), pytest.raises(PoolQueueFull) as caught:
        connections[alias].ensure_connection()
    assert time.monotonic() - started < 1.0, "refused at once, not after the 3 s timeout"
    error = caught.value
    assert error.priority == "low" and error.queue_full is True
    assert f"pool '{alias}' refused a low-priority checkout at once: only 2 connection(s) free" in str(error)
    assert "the last 1 for critical work, 1 more not for low work" in str(error)
    pool = get_pool(alias)
    assert pool.admission.totals()["low"].refused == 1

    # The same free connections still serve normal and then critical work, at once.
    _holding(clients(alias, "normal"))
    _holding(clients(alias, "critical"))
    assert pool.state()["in_use"] == 4


def test_checkouts_of_a_prioritized_pool_name_the_application_code(make_alias, clients):
    alias = make_alias(
        pool={"min_size": 0, "max_size": 2, "timeout": 0.3}, poolguard={"reserve": {"critical": 1}}
    )
    _holding(clients(alias, "critical"))
    _holding(clients(alias, "critical"))
    with priority("critical"), pytest.raises(PoolExhausted) as caught:
        connections[alias].ensure_connection()
    assert "2 held by thread critical-client (oldest " in str(caught.value)
    assert "tests/engine/test_priority.py:" in str(caught.value) and "in Client.run" in str(caught.value)


def test_normal_waits_while_the_critical_reserve_stays_idle(make_alias, clients):
    alias = make_alias(
        pool={"min_size": 0, "max_size": 2, "timeout": 5}, poolguard={"reserve": {"critical": 1}}
    )
    pool_holder = _holding(clients(alias, "normal"))
    waiter = clients(alias, "normal")
    _until(lambda: get_pool(alias) is not None and get_pool(alias).waiting() == 1)
    pool = get_pool(alias)
    # psycopg_pool grows the pool for the waiter, but the new connection is the reserve: it stays idle.
    _until(lambda: pool.state()["size"] == 2 and pool.state()["idle"] == 1)
    time.sleep(0.1)
    assert not waiter.got.is_set(), "a normal checkout took the last connection, reserved for critical work"

    critical = clients(alias, "critical")
    assert critical.got.wait(1), "a critical checkout takes the reserved connection at once"
    assert critical.waited < 0.5
    assert not waiter.got.is_set()

    pool_holder.release()  # 1 free, and it is the reserve while critical holds the other
    time.sleep(0.1)
    assert not waiter.got.is_set(), "with critical holding the other connection, 1 free is still the reserve"
    critical.release()
    assert waiter.got.wait(2), "2 free: the normal waiter is served"


def test_waiters_are_served_critical_then_normal_then_low_first_come_first_served(make_alias, clients):
    # A reserve of 0 turns on the gate without keeping anything back: every class may wait.
    alias = make_alias(
        pool={"min_size": 0, "max_size": 1, "timeout": 10}, poolguard={"reserve": {"critical": 0}}
    )
    holder = _holding(clients(alias, "normal"))
    pool = get_pool(alias)
    served: list[str] = []
    arrivals = ["low", "normal", "low", "critical", "normal", "critical"]
    waiters = []
    for index, klass in enumerate(arrivals):
        waiter = clients(alias, klass, served=served, hold=0.02)
        waiter.name = f"{klass}-{index}"
        waiters.append(waiter)
        _until(lambda n=index + 1: pool.waiting() == n)
    holder.release()
    for waiter in waiters:
        assert waiter.done.wait(10) and waiter.error is None, waiter.error
    assert served == ["critical-3", "critical-5", "normal-1", "normal-4", "low-0", "low-2"]


def test_a_full_queue_makes_room_for_critical_by_refusing_the_latest_lowest_waiter(make_alias, clients):
    alias = make_alias(
        pool={"min_size": 0, "max_size": 1, "timeout": 10, "max_waiting": 2},
        poolguard={"reserve": {"critical": 0}},
    )
    _holding(clients(alias, "normal"))
    pool = get_pool(alias)
    first = clients(alias, "low")
    _until(lambda: pool.waiting() == 1)
    second = clients(alias, "low")
    _until(lambda: pool.waiting() == 2)

    critical = clients(alias, "critical")
    assert second.done.wait(2), "the latest low waiter is refused to make room"
    assert isinstance(second.error, PoolQueueFull) and second.error.priority == "low"
    assert "refused a waiting low-priority checkout: refused to make room for a critical checkout" in str(
        second.error
    )
    _until(lambda: pool.waiting() == 2)
    assert not first.done.is_set() and not critical.done.is_set(), "the others keep waiting"

    with pytest.raises(PoolQueueFull):  # a low checkout finds no worse waiter to refuse: no room
        with priority("low"):
            connections[alias].ensure_connection()


def test_no_class_starves_a_low_waiter_is_served_under_continuous_critical_load(make_alias):
    # timeout 2 s: a waiter rises one class per 0.5 s, so a low waiter counts as critical after 1 s.
    alias = make_alias(
        pool={"min_size": 0, "max_size": 1, "timeout": 2}, poolguard={"reserve": {"critical": 0}}
    )
    stop = threading.Event()
    critical_served = [0]

    def critical_load() -> None:
        with priority("critical"):
            while not stop.is_set():
                try:
                    with connections[alias].cursor() as cursor:
                        cursor.execute("SELECT 1")
                        critical_served[0] += 1
                        time.sleep(0.01)
                except PoolExhausted:
                    pass
                finally:
                    connections[alias].close()

    load = [threading.Thread(target=critical_load, daemon=True) for _ in range(4)]
    for thread in load:
        thread.start()
    _until(lambda: get_pool(alias) is not None and get_pool(alias).waiting() >= 2)
    low = Client(alias, "low", hold=0.0)
    low.start()
    try:
        assert low.done.wait(5)
    finally:
        stop.set()
        for thread in load:
            thread.join(5)
    assert low.error is None, f"the low waiter starved: {low.error!r}"
    assert 0.5 < low.waited < 2.0, "served once aged to critical, before its timeout"
    assert critical_served[0] > 20, "the critical load kept coming all along"


def test_acquire_waits_are_recorded_by_class(make_alias, clients):
    alias = make_alias(
        pool={"min_size": 0, "max_size": 2, "timeout": 2}, poolguard={"reserve": {"critical": 1}}
    )
    clients(alias, "critical", hold=0.0).done.wait(5)
    clients(alias, "normal", hold=0.0).done.wait(5)
    admission = get_pool(alias).admission
    totals = admission.totals()
    assert totals["critical"].acquired == 1 and totals["normal"].acquired == 1 and totals["low"].acquired == 0
    assert len(admission.acquire_samples(0)) == 1


def test_checkouts_served_from_plenty_of_idle_connections_count_by_class(make_alias, clients):
    # 4 idle, more than the largest floor (1): every class is served at once, without the gate.
    alias = make_alias(
        pool={"min_size": 4, "max_size": 4, "timeout": 2}, poolguard={"reserve": {"critical": 1}}
    )
    with connections[alias].cursor():
        pass
    connections[alias].close()
    pool = get_pool(alias)
    pool.wait(5)
    for klass in ("critical", "low", "low"):
        clients(alias, klass, hold=0.0).done.wait(5)
    admission = pool.admission
    totals = admission.totals()
    assert [totals[name].acquired for name in ("critical", "normal", "low")] == [1, 1, 2]
    assert admission.acquire_samples(2) == [0.0, 0.0], "served at once: waited 0"
    assert pool.get_stats()["pool_available"] == 4, "every connection came back idle"


def test_acquire_waits_read_back_as_every_sample_of_the_window():
    """Checkouts served at once are only counted; reading a window gives a 0 for each of them
    and the recorded waits, as a ring of every sample would."""
    import random

    from django_poolguard.engine.priority import RING_SIZE, Admission

    admission = Admission({"critical": 1}, timeout=2.0)
    every: list[float] = []
    seq = 0
    rng = random.Random(15)
    for chunk in (5, 300, 1500, 1, 4000, 0, 1024):
        for _ in range(chunk):
            waited = rng.choice((0.0, 0.0, 0.0, rng.random()))
            admission.observe(1, waited)
            every.append(waited)
        samples, seq = admission.samples_since(1, seq)
        assert seq == len(every)
        assert sorted(samples) == sorted(every[max(0, len(every) - chunk, len(every) - RING_SIZE) :])
    assert sorted(admission.acquire_samples(1)) == sorted(every[-RING_SIZE:])
    assert admission.totals()["normal"].acquired == len(every)
    assert admission.acquire_samples(0) == [] and admission.samples_since(1, seq) == ([], seq)


# --- Classification ----------------------------------------------------------------------

PRIORITIES = {
    "critical": ["checkout", "/api/pay/*"],
    "low": ["reports:*", "/shop/cart/", "tests.celery_app.tasks.priority_class"],
}


@pytest.mark.urls("tests.testapp.priority_views")
@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/checkout/", "critical"),  # URL name
        ("/api/pay/42/", "critical"),  # path glob
        ("/reports/export/", "low"),  # namespaced URL name glob
        ("/reports/daily/", "low"),
        ("/shop/cart/", "low"),  # exact path
        ("/decorated/", "critical"),  # the decorator
        ("/async-decorated/", "low"),
        ("/nowhere/", "normal"),  # no route: normal, then Django's 404
    ],
)
def test_routes_are_classified_by_url_name_path_glob_and_decorator(client, settings, path, expected):
    settings.POOLGUARD = {**settings.POOLGUARD, "PRIORITIES": PRIORITIES}
    response = client.get(path)
    if expected == "normal":
        assert response.status_code == 404
        return
    assert response.content.decode() == expected


@pytest.mark.urls("tests.testapp.priority_views")
def test_without_priorities_every_route_is_normal(client):
    assert client.get("/checkout/").content == b"normal"
    assert client.get("/reports/export/").content == b"normal"


def test_the_decorator_and_block_nest_and_restore():
    assert current_priority() == "normal"
    with priority("low"):
        assert current_priority() == "low"
        with priority("critical"):
            assert current_priority() == "critical"
        assert current_priority() == "low"
    assert current_priority() == "normal"
    with pytest.raises(
        ValueError, match="priority\\('urgent'\\): the classes are 'critical', 'normal', 'low'"
    ):
        priority("urgent")


def test_celery_tasks_are_classified_by_name(settings):
    from tests.celery_app.tasks import priority_class, whoami

    settings.POOLGUARD = {**settings.POOLGUARD, "PRIORITIES": PRIORITIES}
    assert priority_class.apply().get() == "low"
    assert current_priority() == "normal", "reset after the task"
    settings.POOLGUARD = {k: v for k, v in settings.POOLGUARD.items() if k != "PRIORITIES"}
    assert priority_class.apply().get() == "normal"
    assert whoami.name not in str(PRIORITIES)


@pytest.mark.urls("tests.testapp.priority_views")
def test_a_low_route_gets_a_503_naming_its_class_and_route(client, settings, make_alias, clients, caplog):
    import django_poolguard.middleware as middleware

    settings.POOLGUARD = {**settings.POOLGUARD, "PRIORITIES": PRIORITIES}
    alias = make_alias(
        pool={"min_size": 0, "max_size": 3, "timeout": 3}, poolguard={"reserve": {"critical": 1, "normal": 1}}
    )
    _holding(clients(alias, "normal"))
    middleware._last_logged.clear()
    caplog.set_level(logging.WARNING, logger="django_poolguard")

    response = client.get(f"/reports/export/?alias={alias}")
    assert response.status_code == 503
    assert response["Retry-After"]
    assert client.get(f"/checkout/?alias={alias}").content == b"critical", "critical still served"
    line = next(r.getMessage() for r in caplog.records if "Answered 503" in r.getMessage())
    assert (
        f"on alias '{alias}' since the last report (1 low); the last, low-priority GET /reports/export/:"
        in line
    )
    assert get_pool(alias).ledger.shed_by_priority == {"low": 1}


# --- Checks ------------------------------------------------------------------------------


def _databases(pool, poolguard):
    databases = copy.deepcopy(settings.DATABASES)
    databases["default"]["OPTIONS"].update({"pool": pool, "poolguard": poolguard})
    return databases


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES:UserWarning")
@pytest.mark.parametrize(
    ("pool", "reserve", "says"),
    [
        (
            {"min_size": 0, "max_size": 3},
            {"critical": 2, "normal": 1},
            "keeps 3 connection(s) back but the pool has max_size=3",
        ),
        ({"min_size": 2}, {"critical": 2}, "keeps 2 connection(s) back but the pool has max_size=2"),
        ({"max_size": 10}, {"urgent": 2}, "'urgent' is not a class that can reserve connections"),
        (
            {"max_size": 10},
            {"low": 2},
            "'low' is not a class that can reserve connections (low has nothing to reserve)",
        ),
        ({"max_size": 10}, {"critical": -1}, "'critical' has -1; it must be a whole number >= 0"),
        ({"max_size": 10}, [2, 1], "it must be a dict such as"),
    ],
)
def test_a_misconfigured_reserve_is_check_e017(pool, reserve, says):
    with override_settings(DATABASES=_databases(pool, {"reserve": reserve})):
        messages = [m for m in run_checks() if m.id == "django_poolguard.E017"]
    assert len(messages) == 1 and says in messages[0].msg, [m.msg for m in messages]
    assert "reserve" in messages[0].msg and messages[0].hint


def test_a_misconfigured_reserve_is_refused_when_the_alias_connects(make_alias):
    alias = make_alias(pool={"min_size": 0, "max_size": 2}, poolguard={"reserve": {"critical": 2}})
    with pytest.raises(ImproperlyConfigured, match="E017"):
        connections[alias].ensure_connection()


@pytest.mark.parametrize(
    ("priorities", "says"),
    [
        (
            {"urgent": ["checkout"]},
            "'urgent' is not a priority class (the classes are critical, normal, low)",
        ),
        ({"critcal": ["checkout"]}, "did you mean 'critical'?"),
        ({"low": "reports:*"}, "'low' has 'reports:*'; it must be a list of patterns"),
        ({"low": [""]}, "it must be a non-empty string"),
        (["checkout"], "it must be a dict of class"),
    ],
)
def test_misconfigured_priorities_are_check_e017(settings, priorities, says):
    settings.POOLGUARD = {**settings.POOLGUARD, "PRIORITIES": priorities}
    messages = [m for m in run_checks() if m.id == "django_poolguard.E017"]
    assert len(messages) == 1 and says in messages[0].msg, [m.msg for m in messages]


# --- The dashboard -----------------------------------------------------------------------


def test_the_snapshot_and_the_dashboard_show_each_class(make_alias, clients):
    import json

    from django_poolguard.fleet.schema import read_entry
    from django_poolguard.fleet.snapshots import process_snapshot
    from django_poolguard.web import dashboard

    alias = make_alias(
        pool={"min_size": 0, "max_size": 3, "timeout": 2}, poolguard={"reserve": {"critical": 1, "normal": 1}}
    )
    assert clients(alias, "critical", hold=0.0).done.wait(5)
    _holding(clients(alias, "normal"))
    with priority("low"), pytest.raises(PoolQueueFull):
        connections[alias].ensure_connection()
    get_pool(alias).ledger.count_shed("low")  # as the middleware does for the 503

    published = json.loads(json.dumps(process_snapshot()))
    entry = read_entry(published)
    classes = entry["aliases"][alias]["priorities"]
    assert classes["critical"]["acquired_total"] == 1 and classes["normal"]["acquired_total"] == 1
    assert classes["low"] == {**classes["low"], "acquired_total": 0, "refused_total": 1, "shed_total": 1}

    card = next(c for c in dashboard.build(with_sessions=False)["cards"] if c["alias"] == alias)
    assert [
        (r["name"], r["acquired_total"], r["refused_total"], r["shed_total"]) for r in card["priorities"]
    ] == [
        ("critical", 1, 0, 0),
        ("normal", 1, 0, 0),
        ("low", 0, 1, 1),
    ]


def test_a_bad_priorities_entry_makes_the_entry_unreadable_not_the_view():
    from django_poolguard.fleet.schema import Unreadable, read_entry
    from django_poolguard.fleet.snapshots import process_snapshot

    entry = process_snapshot()
    entry["aliases"] = {"x": {**_any_alias_snapshot(), "priorities": {"low": {"shed_total": -1}}}}
    result = read_entry(entry)
    assert isinstance(result, Unreadable) and "priorities.low.shed_total" in result.reason


def _any_alias_snapshot():
    return {
        "workload": "web",
        "min": 0,
        "max": 2,
        "size": 0,
        "in_use": 0,
        "idle": 0,
        "waiting": 0,
        "utilization": 0.0,
        "status": "healthy",
    }
