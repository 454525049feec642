"""The seed incidents as scenarios: real requests through Django's WSGI handler, from threads,
against the shop's real pools, while a probe keeps asking for the product list.

A scenario runs in this process so it can hear what poolguard says (its log records) and what
Django's own pool says (the exceptions behind 500s). ``manage.py incident`` runs each scenario
twice, in two processes: once guarded (the shop's settings) and once with ``SHOP_POOL_MODE=native``
(Django's own pool, same database, same ``max_size``).
"""

from __future__ import annotations

import io
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import got_request_exception
from django.db import connections

from django_poolguard import workload

PROBE_PATH = "/products/"
CHECKOUT_PATH = "/checkout/"
# A probe answer slower than this is "not answering": the guarded web pool's timeout is 3 s.
ANSWER_WITHIN = 4.0


@dataclass
class Response:
    started: float  # s since the scenario began
    elapsed: float
    status: int
    path: str


@dataclass
class Finding:
    at: float  # s since the scenario began
    source: str  # "poolguard log" or "Django error"
    text: str


@dataclass
class Scenario:
    name: str
    title: str
    seed: str
    culprit: list[str]  # any of these in what the guard says names the culprit
    run: Callable[[Run], None]
    duration: float
    warmup: tuple[str, ...] = (PROBE_PATH,)  # production pools are warm: connect before the clock starts
    # The configurations replayed: Django's pool, poolguard, and for some poolguard with priorities
    # or poolguard's release modes.
    sides: tuple[str, ...] = ("native", "guarded")


@dataclass
class Run:
    """One scenario run: the traffic, the answers and what was said about them."""

    scenario: Scenario
    mode: str
    t0: float = field(default_factory=time.monotonic)
    responses: list[Response] = field(default_factory=list)
    probes: list[Response] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    # Guards responses, probes and findings: request threads, probes and log handlers append at once.
    lock: threading.Lock = field(default_factory=threading.Lock)
    handler: WSGIHandler = field(default_factory=WSGIHandler)
    threads: list[threading.Thread] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.t0

    # --- traffic ----------------------------------------------------------------------------

    def request(self, method: str, url: str, *, probe: bool = False) -> Response:
        """One request through Django's WSGI handler, as gunicorn's worker thread makes it."""
        parts = urlsplit(url)
        environ = {
            "REQUEST_METHOD": method,
            "PATH_INFO": parts.path,
            "QUERY_STRING": parts.query,
            "SERVER_NAME": "shop.local",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "HTTP_ACCEPT": "application/json",
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(b""),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "CONTENT_LENGTH": "0",
        }
        status: list[int] = []
        started = self.now()
        body = self.handler(environ, lambda s, headers, exc_info=None: status.append(int(s.split()[0])))
        try:
            b"".join(body)
        finally:
            body.close()  # fires request_finished: Django gives the connection back, as a server does
        response = Response(started, self.now() - started, status[0], parts.path)
        with self.lock:
            (self.probes if probe else self.responses).append(response)
        return response

    def spawn(self, target: Callable[[], Any], name: str) -> None:
        thread = threading.Thread(target=self._quietly(target), name=name, daemon=True)
        self.threads.append(thread)
        thread.start()

    def burst(self, count: int, method: str, url: str, every: float = 0.0) -> None:
        """``count`` concurrent clients, one request each, ``every`` seconds apart."""
        for i in range(count):
            self.spawn(lambda: self.request(method, url), f"client-{i}")
            if every:
                time.sleep(every)

    def probe(self, until: float) -> None:
        """Three clients asking for the product list every 0.1 s, as the rest of the site does."""

        def loop() -> None:
            while self.now() < until:
                self.request("GET", PROBE_PATH, probe=True)
                time.sleep(0.1)

        for i in range(3):
            self.spawn(loop, f"probe-{i}")

    def buyers(self, until: float) -> None:
        """Two shoppers checking out every 0.2 s: the critical work of the shop."""

        def loop() -> None:
            while self.now() < until:
                self.request("POST", CHECKOUT_PATH)
                time.sleep(0.2)

        for i in range(2):
            self.spawn(loop, f"buyer-{i}")

    def wait(self, until: float) -> None:
        while self.now() < until:
            time.sleep(0.1)
        deadline = time.monotonic() + 30
        for thread in self.threads:
            thread.join(max(deadline - time.monotonic(), 0))

    def _quietly(self, target: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except Exception as exc:  # a client error is a result, recorded as such
                self.note("client error", f"{type(exc).__name__}: {exc}")

        return run

    # --- what was said ------------------------------------------------------------------------

    def note(self, source: str, text: str) -> None:
        with self.lock:
            self.findings.append(Finding(round(self.now(), 2), source, " ".join(text.split())))

    def named_at(self) -> tuple[float | None, str]:
        """When poolguard first named the culprit, and what it said."""
        for finding in self.findings:
            if finding.source.startswith("poolguard") and any(
                m in finding.text for m in self.scenario.culprit
            ):
                return finding.at, finding.text
        return None, ""

    def summary(self) -> dict[str, Any]:
        answered = [p for p in self.probes if p.status in (200, 503) and p.elapsed <= ANSWER_WITHIN]
        named_at, named = self.named_at()
        first_error = next((f for f in self.findings if f.source == "Django error"), None)
        everything = self.responses + self.probes
        return {
            "scenario": self.scenario.name,
            "mode": self.mode,
            "requests": len(everything),
            "served": sum(1 for r in everything if r.status < 400),
            "shed_503": sum(1 for r in everything if r.status == 503),
            "failed_5xx": sum(1 for r in everything if r.status >= 500 and r.status != 503),
            "probes": len(self.probes),
            "probes_answered": len(answered),
            "probe_worst_s": round(max((p.elapsed for p in self.probes), default=0.0), 2),
            "named_at_s": named_at,
            "named": named,
            "first_error": first_error.text if first_error else "",
            **self._checkouts(),
            "findings": [f"{f.at:>6.2f} s  {f.source}: {f.text[:400]}" for f in self.findings[:12]],
            **self.extra,
        }

    def _checkouts(self) -> dict[str, Any]:
        """How the shoppers' checkouts fared, when the scenario has any."""
        checkouts = [r for r in self.responses if r.path == CHECKOUT_PATH]
        if not checkouts:
            return {}
        return {
            "checkouts": len(checkouts),
            "checkouts_served": sum(1 for r in checkouts if r.status < 400),
            "checkout_worst_s": round(max(r.elapsed for r in checkouts), 2),
        }


class _Listener(logging.Handler):
    """Hands poolguard's log records to the run, with their time."""

    def __init__(self, run: Run) -> None:
        super().__init__(logging.INFO)
        self.run = run

    def emit(self, record: logging.LogRecord) -> None:
        self.run.note(f"poolguard log {record.levelname}", record.getMessage())


def _usable_connections(alias: str = "default") -> str:
    """``free/max`` of the pool after the scenario: what the service is left with."""
    pool = connections[alias].pool
    if pool is None:
        return "-"
    stats = pool.get_stats()
    in_use = stats.get("pool_size", 0) - stats.get("pool_available", 0)
    return f"{pool.max_size - in_use}/{pool.max_size}"


PROGRESS_EVERY = 3.0  # s between progress lines while a scenario runs


def _report_progress(run: Run, progress: Callable[[str], None], done: threading.Event) -> None:
    while not done.wait(PROGRESS_EVERY):
        with run.lock:
            answered = sum(1 for r in run.responses + run.probes if r.status < 400)
            total = len(run.responses) + len(run.probes)
        if run.now() < run.scenario.duration:
            progress(f"{run.now():.0f}/{run.scenario.duration:.0f} s, {total} requests, {answered} served")
        else:
            waiting = sum(1 for thread in run.threads if thread.is_alive())
            progress(f"waiting for {waiting} request(s) still in flight (at most 30 s), {answered} served")


def execute(scenario: Scenario, mode: str, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run ``scenario`` in this process; ``progress`` hears a line every few seconds."""
    run = Run(scenario, mode)
    listener = _Listener(run)
    guard_logger = logging.getLogger("django_poolguard")
    guard_logger.addHandler(listener)

    def on_exception(sender: Any, request: Any = None, **kwargs: Any) -> None:
        error = sys.exc_info()[1]
        run.note("Django error", f"{type(error).__name__}: {error}")

    got_request_exception.connect(on_exception, weak=False, dispatch_uid="shop.incidents")
    done = threading.Event()  # stops the progress thread
    try:
        for path in scenario.warmup:
            run.request("GET", path)
        run.responses.clear()
        run.findings.clear()
        run.t0 = time.monotonic()
        if progress is not None:
            progress(f"replaying for {scenario.duration:.0f} s")
            threading.Thread(
                target=_report_progress, args=(run, progress, done), name="incident-progress", daemon=True
            ).start()
        scenario.run(run)
        run.wait(scenario.duration)
        time.sleep(1)  # let the watchdog's last reclaim land before looking at the pool
        run.extra.setdefault("usable_after", _usable_connections())
    finally:
        done.set()
        got_request_exception.disconnect(dispatch_uid="shop.incidents")
        guard_logger.removeHandler(listener)
    return run.summary()


# --- The scenarios -------------------------------------------------------------------------------


def _leak(run: Run) -> None:
    # The warehouse API is down: every notification's thread takes the error path and leaks.
    run.probe(until=12)
    run.burst(12, "POST", "/orders/notify/?fail=1", every=0.25)


def _slow_report(run: Run) -> None:
    # Saturday, 11 PM: one cron job starts four report threads; two more people open the report.
    run.probe(until=24)
    run.burst(4, "GET", "/reports/revenue/?seconds=20")
    time.sleep(1)
    run.burst(2, "GET", "/reports/revenue/?seconds=20")


def _spike(run: Run) -> None:
    # 1000 rps on 20 connections, scaled: 40 clients at once on 6 connections, each request an
    # N+1 listing holding its connection for a hundred round trips, three waves. Meanwhile
    # shoppers keep buying: the checkouts are what the spike must not cost.
    run.probe(until=8)
    run.buyers(until=8)
    for _ in range(3):
        run.burst(40, "GET", "/products/by-category/")
        time.sleep(2)


def _hoard(run: Run) -> None:
    # The payment provider slows to 6 s; every payment holds its transaction open across the call.
    run.probe(until=12)
    run.burst(8, "POST", "/payments/pay/?delay=6", every=0.1)


def _hoard_fixed(run: Run) -> None:
    # The same slow provider, called outside the transaction: a read, the 6 s call, the write.
    # Released only between transactions does the pool of 6 serve more than 6 payments at a time.
    run.probe(until=12)
    run.burst(16, "POST", "/payments/pay/?delay=6&fixed=1", every=0.1)


def _worker_storm(run: Run) -> None:
    # A backfill to "catch up": eight chunks at once, as eight Celery worker threads run them.
    from .tasks import backfill_order_totals

    run.probe(until=12)

    def chunk(i: int) -> Callable[[], Any]:
        def work() -> None:
            with workload("worker"):
                try:
                    backfill_order_totals.apply(args=(i * 25, i * 25 + 24, 6.0), throw=True)
                finally:
                    connections.close_all()  # as the worker does after each task

        return work

    for i in range(8):
        run.spawn(chunk(i), f"worker-{i}")
    time.sleep(2)
    # What poolguard's ledger says about the pools while the backfill runs.
    from django_poolguard.engine.pool import all_pools, describe_holders

    for alias, pool in sorted(all_pools().items()):
        holders = describe_holders(pool)
        if holders:
            state = pool.state()
            run.note(
                "poolguard ledger",
                f"pool {alias!r} ({state['in_use']}/{state['max']} in use, {state['waiting']} waiting): {holders}",
            )


def _profile(run: Run) -> None:
    # An ordinary evening: a couple of reports, payments through a slow provider, the N+1 listing.
    run.probe(until=8)
    run.burst(2, "GET", "/reports/revenue/?seconds=4")
    run.burst(4, "POST", "/payments/pay/?delay=1.5", every=0.2)
    run.burst(3, "GET", "/products/by-category/", every=0.5)
    run.wait(8)
    time.sleep(1.5)  # the watchdog's last look at the holders, the last connections back
    # What the pool-time profile says: every alias's labels, longest held first, and its findings.
    from django_poolguard.fleet.schema import read_entry
    from django_poolguard.fleet.snapshots import process_snapshot
    from django_poolguard.fleet.top import alias_profile

    entry = read_entry(process_snapshot(with_checkouts=False))
    if not isinstance(entry, dict):
        return
    top, found = [], []
    for alias in entry["aliases"]:
        profile = alias_profile([entry], alias)  # type: ignore[list-item]
        if profile is None:
            continue
        top += [{"alias": alias, **holder} for holder in profile["top"]]
        found += [{"alias": alias, **finding} for finding in profile["findings"]]
    top.sort(key=lambda holder: -holder["held_s"])
    run.extra["top"] = top
    run.extra["profile_findings"] = found
    for finding in found:
        run.note("poolguard profile", f"{finding['text']} [{finding['where']}]")


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario(
            "leak",
            "error path leaks, pool drains",
            "seed 003",
            ["notify_warehouse"],
            _leak,
            duration=12,
        ),
        Scenario(
            "slow-report",
            "the Saturday 11 PM report drains the pool",
            "seed 002",
            ["/reports/revenue/", "revenue_by_day"],
            _slow_report,
            duration=24,
            warmup=(PROBE_PATH, "/reports/revenue/?seconds=0"),
        ),
        Scenario(
            "spike",
            "1000 rps on a 20-connection pool, scaled down",
            "seed 000",
            ["/products/by-category/", "products_by_category"],
            _spike,
            duration=10,
            sides=("native", "guarded", "prioritized"),
        ),
        Scenario(
            "hoard",
            "a transaction held across a slow payment API",
            "seeds 001, 003",
            ["in pay"],
            _hoard,
            duration=12,
        ),
        Scenario(
            "hoard-fixed",
            "the payment call moved out of the transaction: request vs transaction release",
            "seeds 001, 003",
            [],
            _hoard_fixed,
            duration=12,
            sides=("guarded", "transaction"),
        ),
        Scenario(
            "profile",
            "where the pool time goes: a slow report, a payment API inside the request, an N+1 listing",
            "seeds' checklist",
            ["holds connections idle"],
            _profile,
            duration=8,
            warmup=(PROBE_PATH, "/reports/revenue/?seconds=0"),
        ),
        Scenario(
            "worker-storm",
            "a backfill starves the API",
            "seed 001",
            ["backfill_order_totals"],
            _worker_storm,
            duration=14,
        ),
    ]
}


def mode() -> str:
    """``native``, ``guarded``, or ``transaction`` (guarded, web alias in transaction release mode)."""
    pool_mode = str(getattr(settings, "POOL_MODE", "guarded"))
    if pool_mode == "guarded" and getattr(settings, "RELEASE", "request") == "transaction":
        return "transaction"
    return pool_mode


#: How each side is named in the replay's output.
SIDE_NAMES = {
    "native": "Django's own pool",
    "guarded": "poolguard",
    "prioritized": "poolguard with priorities",
    "transaction": "poolguard, release=transaction",
}
