"""Prometheus metrics for every pool of this process, on prometheus_client's default registry.

django-prometheus's ``/metrics`` (or any exporter of the default registry) serves them. This
module needs the ``prometheus`` extra; the app imports it only when ``prometheus_client`` is
installed.

Nothing here runs on the checkout path: the watchdog calls the runtime's :class:`Exporter`'s ``export`` every
``MONITOR_INTERVAL``, which sets the gauges from the pools' state, observes the acquire and
hold times recorded since the last run (``Ledger.samples_since``) and adds the growth of the
ledger's counters. Under gunicorn or Celery prefork with ``PROMETHEUS_MULTIPROC_DIR`` each
process writes its own files: counters and histograms are summed, and the gauges use
``livesum`` so a host's figure is the sum over its live processes (see docs/metrics.md).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

from django_poolguard.conf import guard_settings
from django_poolguard.engine.ledger import Ledger
from django_poolguard.engine.pool import GuardedPool, all_pools
from django_poolguard.engine.priority import NORMAL, PRIORITY_CLASSES
from django_poolguard.engine.profile import OTHER, busy_ratio
from django_poolguard.fleet.leases import lease_snapshot

# Acquire waits are sub-millisecond when the pool is healthy and reach the pool timeout when it is not.
ACQUIRE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Hold times run from one query to a report, a leak or a hoarded transaction.
CHECKOUT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

# Gauges are per-process amounts: summing them over live processes gives the host's (and, in
# PromQL, the fleet's) figure, so utilization = sum(in_use) / sum(max) stays a true fraction.
pool_connections = Gauge(
    "poolguard_pool_connections",
    "Connections of the pool, by state (in_use: checked out; idle: ready in the pool).",
    ["alias", "state"],
    multiprocess_mode="livesum",
)
pool_max_connections = Gauge(
    "poolguard_pool_max_connections",
    "The pool's max_size: how many connections it may open.",
    ["alias"],
    multiprocess_mode="livesum",
)
pool_waiting = Gauge(
    "poolguard_pool_waiting",
    "Checkouts waiting for a connection right now.",
    ["alias"],
    multiprocess_mode="livesum",
)
leaks_active = Gauge(
    "poolguard_leaks_active",
    "Checkouts held past the alias's leak_threshold and not yet returned.",
    ["alias"],
    multiprocess_mode="livesum",
)
acquire_seconds = Histogram(
    "poolguard_acquire_seconds",
    "Time a checkout waited for a connection.",
    ["alias"],
    buckets=ACQUIRE_BUCKETS,
)
checkout_seconds = Histogram(
    "poolguard_checkout_seconds",
    "Time a connection was held, from checkout to return.",
    ["alias"],
    buckets=CHECKOUT_BUCKETS,
)
acquire_timeouts = Counter(
    "poolguard_acquire_timeouts_total",
    "Checkouts that waited the pool's whole timeout and got no connection.",
    ["alias"],
)
acquire_rejected = Counter(
    "poolguard_acquire_rejected_total",
    "Checkouts refused at once because max_waiting clients were already queued.",
    ["alias"],
)
requests_shed = Counter(
    "poolguard_requests_shed_total",
    "Requests PoolGuardMiddleware answered 503 because the alias's pool was exhausted, by priority class.",
    ["alias", "priority"],
)
priority_acquire_seconds = Histogram(
    "poolguard_priority_acquire_seconds",
    "Time a checkout waited for a connection, by priority class (aliases with a reserve only).",
    ["alias", "priority"],
    buckets=ACQUIRE_BUCKETS,
)
leaks_detected = Counter(
    "poolguard_leaks_detected_total",
    "Checkouts reported as leaks (held past leak_threshold) or hoards (idle in a transaction).",
    ["alias", "kind"],
)
connections_reclaimed = Counter(
    "poolguard_connections_reclaimed_total",
    "Connections given back to the pool because their holder thread exited or was collected.",
    ["alias", "reason"],
)
connections_opened = Counter(
    "poolguard_connections_opened_total",
    "Physical connections the pool opened to PostgreSQL.",
    ["alias"],
)
invariant_violations = Counter(
    "poolguard_pool_invariant_violations_total",
    "Times the pool's connections did not add up (size = idle + in use + opening + returning) on two "
    "checks in a row, or the pool was wedged and replaced; each was repaired.",
    ["alias"],
)
connection_errors = Counter(
    "poolguard_connection_errors_total",
    "Failed attempts to open a connection.",
    ["alias"],
)
checkouts_released = Counter(
    "poolguard_checkouts_released_total",
    "Checkouts given back to the pool between transactions (release mode 'transaction').",
    ["alias"],
)
checkouts_pinned = Counter(
    "poolguard_checkouts_pinned_total",
    "Checkouts kept until their request or task ended because their session holds state "
    "(release mode 'transaction'), by what pinned them.",
    ["alias", "reason"],
)

# The pool-time profile (engine/profile.py): label is a route pattern, task, command or thread,
# at most PROFILE_TOP of them per alias plus "other", so the series stay bounded.
pool_seconds = Counter(
    "poolguard_pool_seconds_total",
    "Seconds connections were held (checkout to return), by route, task, command or thread.",
    ["alias", "label"],
)
db_seconds = Counter(
    "poolguard_db_seconds_total",
    "Of the pool-seconds held, the seconds a query or commit was running: the database's share.",
    ["alias", "label"],
)
db_busy_ratio = Gauge(
    "poolguard_db_busy_ratio",
    "The database's share of the pool time held in this process since its pool opened (goodput).",
    ["alias"],
    multiprocess_mode="liveall",
)

# Fleet budgets (OPTIONS["poolguard"]["fleet_budget"]): this process's lease of its alias's budget.
# Summed over live processes, pool_lease is the fleet's leased total; the budget is the same in
# every process of the workload, so its maximum is the budget (and not a sum of copies).
pool_lease = Gauge(
    "poolguard_pool_lease",
    "Connections this process may hold under its alias's fleet budget (its pool's max_size follows it).",
    ["alias"],
    multiprocess_mode="livesum",
)
fleet_budget = Gauge(
    "poolguard_fleet_budget",
    "The alias's fleet budget: connections for its workload across every process.",
    ["alias"],
    multiprocess_mode="livemax",
)
lease_fallback = Gauge(
    "poolguard_lease_fallback",
    "1 while the lease store is unreachable and the pool runs on its static share (summed: such processes).",
    ["alias"],
    multiprocess_mode="livesum",
)
LEASE_GAUGES = (pool_lease, fleet_budget, lease_fallback)

# (counter, extra labels, reading) for the counters that mirror a single pool or ledger total.
_TOTALS: tuple[tuple[Counter, dict[str, str], Callable[[GuardedPool], int]], ...] = (
    (acquire_timeouts, {}, lambda pool: pool.ledger.timeouts_total),
    (acquire_rejected, {}, lambda pool: pool.ledger.rejected_total),
    (leaks_detected, {"kind": "leak"}, lambda pool: pool.ledger.leaks_total),
    (leaks_detected, {"kind": "hoard"}, lambda pool: pool.ledger.hoards_total),
    (connections_opened, {}, lambda pool: pool.connections_opened()),
    (connection_errors, {}, lambda pool: pool.connection_errors()),
    (invariant_violations, {}, lambda pool: pool.ledger.invariant_violations_total),
    (checkouts_released, {}, lambda pool: pool.ledger.released_total),
)


def _reclaimed_by_reason(ledger: Ledger) -> dict[str, int]:
    return dict(ledger.reclaimed_by_reason)  # "thread_exited" / "wrapper_collected" -> count


class _PoolProgress:
    """How much of one pool's counters and sample rings has been exported already."""

    def __init__(self, pool: GuardedPool) -> None:
        self.pool_ref = weakref.ref(pool)
        self.acquire_seq = 0
        self.held_seq = 0
        self.priority_seq = [0] * len(PRIORITY_CLASSES)
        self.totals: dict[tuple[int, tuple[tuple[str, str], ...]], int] = {}
        self.profile_last: dict[str, tuple[float, float]] = {}  # profile label -> exported totals
        self.exported_labels: set[str] = set()  # labels with their own series (PROFILE_TOP at most)

    def delta(self, key: tuple[int, tuple[tuple[str, str], ...]], value: int) -> int:
        """Growth since the last export; a counter that went back (stats reset) counts from zero."""
        last = self.totals.get(key, 0)
        self.totals[key] = value
        return value - last if value >= last else value


def _initialize(alias: str) -> None:
    # Create the alias's counter series at 0, so its first increment is a visible increase()
    # and alert expressions that combine series find all of them.
    for counter, extra, _ in _TOTALS:
        counter.labels(alias=alias, **extra)
    acquire_seconds.labels(alias=alias)
    checkout_seconds.labels(alias=alias)
    requests_shed.labels(alias=alias, priority=NORMAL)


class Exporter:
    """Copies the pools' state into the metrics; one instance per process, driven by the watchdog."""

    def __init__(self) -> None:
        # Serializes exports: the watchdog thread and a test's run_once() may export at once,
        # and each delta must be added exactly once.
        self._lock = threading.Lock()
        self._progress: dict[str, _PoolProgress] = {}

    def export(self) -> None:
        with self._lock:
            pools = all_pools()
            for alias, pool in pools.items():
                progress = self._progress.get(alias)
                if progress is None or progress.pool_ref() is not pool:
                    # A new pool (first use, or reopened): its counters start again from zero,
                    # the exported ones keep counting up.
                    progress = self._progress[alias] = _PoolProgress(pool)
                    _initialize(alias)
                self._export_pool(alias, pool, progress)
            for alias in set(self._progress) - set(pools):
                # The pool was closed: it holds nothing and nobody waits on it any more.
                del self._progress[alias]
                for state in ("in_use", "idle"):
                    pool_connections.labels(alias=alias, state=state).set(0)
                pool_max_connections.labels(alias=alias).set(0)
                pool_waiting.labels(alias=alias).set(0)
                leaks_active.labels(alias=alias).set(0)
                for gauge in (db_busy_ratio, *LEASE_GAUGES):
                    try:
                        gauge.remove(alias)
                    except KeyError:
                        pass

    def _export_pool(self, alias: str, pool: GuardedPool, progress: _PoolProgress) -> None:
        state = pool.state()
        ledger = pool.ledger
        pool_connections.labels(alias=alias, state="in_use").set(state["in_use"])
        pool_connections.labels(alias=alias, state="idle").set(state["idle"])
        pool_max_connections.labels(alias=alias).set(state["max"])
        pool_waiting.labels(alias=alias).set(state["waiting"])
        leaks_active.labels(alias=alias).set(sum(1 for c in ledger.checkouts() if c.reported is not None))

        samples, progress.acquire_seq = ledger.samples_since("acquire", progress.acquire_seq)
        histogram = acquire_seconds.labels(alias=alias)
        for sample in samples:
            histogram.observe(sample)
        samples, progress.held_seq = ledger.samples_since("held", progress.held_seq)
        histogram = checkout_seconds.labels(alias=alias)
        for sample in samples:
            histogram.observe(sample)

        for index, (counter, extra, read) in enumerate(_TOTALS):
            key = (index, tuple(sorted(extra.items())))
            grown = progress.delta(key, read(pool))
            if grown:
                counter.labels(alias=alias, **extra).inc(grown)
        for reason, value in _reclaimed_by_reason(ledger).items():
            grown = progress.delta((-1, (("reason", reason),)), value)
            if grown:
                connections_reclaimed.labels(alias=alias, reason=reason).inc(grown)
        for priority, value in dict(ledger.shed_by_priority).items():
            grown = progress.delta((-2, (("priority", priority),)), value)
            if grown:
                requests_shed.labels(alias=alias, priority=priority).inc(grown)
        if pool.admission is not None:
            for rank, priority in enumerate(PRIORITY_CLASSES):
                samples, progress.priority_seq[rank] = pool.admission.samples_since(
                    rank, progress.priority_seq[rank]
                )
                histogram = priority_acquire_seconds.labels(alias=alias, priority=priority)
                for sample in samples:
                    histogram.observe(sample)
        for reason, value in dict(ledger.pinned_by_reason).items():
            grown = progress.delta((-2, (("reason", reason),)), value)
            if grown:
                checkouts_pinned.labels(alias=alias, reason=reason).inc(grown)
        if guard_settings.PROFILE:
            _export_profile(alias, pool, progress)
        _export_lease(alias)


def _export_lease(alias: str) -> None:
    """The alias's lease, budget and fallback; no series for an alias without a fleet budget
    (or before its first lease), so a sum over aliases counts only budgeted ones."""
    lease = lease_snapshot(alias)
    if lease is None:
        for gauge in LEASE_GAUGES:
            try:
                gauge.remove(alias)
            except KeyError:
                pass
        return
    pool_lease.labels(alias=alias).set(lease["lease"])
    fleet_budget.labels(alias=alias).set(lease["budget"])
    lease_fallback.labels(alias=alias).set(1 if lease["fallback"] else 0)


def _export_profile(alias: str, pool: GuardedPool, progress: _PoolProgress) -> None:
    """Each label's growth since the last export, on its own series while there is room
    (``PROFILE_TOP``), else on ``other``. A label the profile evicted has its series removed;
    what it had exported is subtracted from the growth ``other`` shows for it, so nothing is
    counted twice."""
    current = pool.ledger.profile.label_totals()
    last = progress.profile_last
    gone = [label for label in last if label not in current]
    lost_held = sum(last[label][0] for label in gone)
    lost_db = sum(last[label][1] for label in gone)
    for label in gone:
        del last[label]
        if label in progress.exported_labels:
            progress.exported_labels.discard(label)
            for counter in (pool_seconds, db_seconds):
                try:
                    counter.remove(alias, label)
                except KeyError:
                    pass
    room = int(guard_settings.PROFILE_TOP)
    # "other" comes last in label_totals(): what the labels above lost to it is known by then.
    for label, (held, db) in current.items():
        before_held, before_db = last.get(label, (0.0, 0.0))
        if label == OTHER:
            grown_held, grown_db = held - before_held - lost_held, db - before_db - lost_db
        elif held < before_held:  # evicted and seen again since the last export: it starts over
            lost_held, lost_db = lost_held + before_held, lost_db + before_db
            grown_held, grown_db = held, db
        else:
            grown_held, grown_db = held - before_held, db - before_db
        last[label] = (held, db)
        if label != OTHER and label not in progress.exported_labels and len(progress.exported_labels) < room:
            progress.exported_labels.add(label)
        target = label if label in progress.exported_labels else OTHER
        if grown_held > 0:
            pool_seconds.labels(alias=alias, label=target).inc(grown_held)
        if grown_db > 0:
            db_seconds.labels(alias=alias, label=target).inc(grown_db)
    held_total, db_total = pool.ledger.profile.totals()
    ratio = busy_ratio(held_total, db_total)
    if ratio is not None:
        db_busy_ratio.labels(alias=alias).set(ratio)


__all__ = ["Exporter"]
