"""The pool-time profile: which routes, tasks, commands and threads hold a pool's connections,
and how much of that time the database was working for them.

Django holds a pooled connection from a request's first query to its end, so a view that
queries once and then waits on a payment API holds a connection for the whole wait. Every
returned checkout is folded here (:meth:`Profile.fold`, called by ``Ledger.remove``) into the
statistics of its *label*: ``METHOD /url/pattern/`` for requests (the pattern, never the raw
path), ``task <name>``, ``command <name>`` or ``thread <name>`` (digits folded, so numbered
threads are one label).

Memory is bounded whatever the traffic: at most ``2 * PROFILE_TOP`` labels are kept; when a new
label finds the table full, the smaller half (by pool-seconds) is folded into ``"other"``. The
fold takes no lock: like the ledger's, its updates are plain attribute arithmetic; only
admitting a new label (rare) takes one. Distributions (queries per checkout, acquire waits)
are fixed-bucket histograms, so processes' profiles sum into a fleet's.
"""

from __future__ import annotations

import contextvars
import re
import threading
from bisect import bisect_left
from collections.abc import Iterable
from typing import Any, Protocol, TypedDict

from django_poolguard._compat import current_frames
from django_poolguard.conf import guard_settings
from django_poolguard.engine import stacks
from django_poolguard.engine.context import current_context

#: Upper bounds of the queries-per-checkout buckets (a last bucket takes the rest).
QUERY_BOUNDS: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 75, 100, 150, 200, 300, 500, 1000, 2000, 5000)  # fmt: skip
#: Upper bounds of the acquire-wait buckets, in seconds.
WAIT_BOUNDS: tuple[float, ...] = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)  # fmt: skip
_QUERY_BUCKET = [bisect_left(QUERY_BOUNDS, n) for n in range(1001)]  # no call per return
_WAIT_FIRST, _WAIT_SECOND = WAIT_BOUNDS[0], WAIT_BOUNDS[1]  # where most waits fall
OTHER = "other"
NO_ROUTE = "(no route)"
MAX_SQL_KINDS = 32  # distinct statements counted per checkout once it crossed the N+1 threshold
MAX_SITES = 8  # idle places kept per label: the most seen survive
SHAPE_CHARS = 300
LABEL_CACHE = 4096  # raw thread/task labels -> profile label, cleared when full
KEY_CACHE = 1024  # raw keys -> stats; it holds Thread objects, so kept small
IDLE_SAMPLE_MIN = 0.05  # s without a query before the watchdog looks where the holder is


class Scope:
    """One unit of work's profile identity (a request): its label, filled in once the URL
    pattern is known, and when it last met an exhausted pool (to count retries)."""

    __slots__ = ("exhausted_at", "label")

    def __init__(self, label: str) -> None:
        self.label = label
        self.exhausted_at: float | None = None


class Checkout(Protocol):
    """What the profile reads and writes of a ledger ``Checkout`` (engine/ledger.py, which
    imports this module: named here by shape, so the two modules do not import each other)."""

    thread: threading.Thread
    context: str | None
    stack: stacks.RawStack
    started: float
    wait: float
    tx_started: float | None
    scope: Scope | None
    queries: int
    db_time: float
    query_started: float
    last_query: float
    tx_time: float
    sql_counts: dict[str, list[Any]] | None
    idle_site: str | None


_scope: contextvars.ContextVar[Scope | None] = contextvars.ContextVar("poolguard_scope", default=None)


def current_scope() -> Scope | None:
    return _scope.get()


def set_scope(scope: Scope | None) -> contextvars.Token[Scope | None]:
    return _scope.set(scope)


def reset_scope(token: contextvars.Token[Scope | None]) -> None:
    _scope.reset(token)


def route_label(method: str | None, route: str | None) -> str:
    """``"GET /orders/<int:pk>/"``: a request's label by URL pattern, bounded by the URLconf."""
    return f"{method} /{route}" if route is not None else f"{method} {NO_ROUTE}"


_DIGITS = re.compile(r"\d+")
_TASK_ID = re.compile(r"^(task [^\[\s]+)\[.*$", re.DOTALL)
_label_cache: dict[str, str] = {}


def plain_label(raw: str) -> str:
    """A ledger label without what makes it unique: a task's id, a thread's number."""
    label = _label_cache.get(raw)
    if label is None:
        if raw.startswith("task "):
            label = _TASK_ID.sub(r"\1", raw)
        elif raw.startswith("thread "):
            label = _DIGITS.sub("N", raw)
        else:
            label = raw
        label = label[:200]
        if len(_label_cache) >= LABEL_CACHE:
            _label_cache.clear()
        _label_cache[raw] = label
    return label


# --- SQL shapes --------------------------------------------------------------------------------

_STRING = re.compile(r"'(?:[^']|'')*'")
_NUMBER = re.compile(r"(?<![\w$])-?\d+(?:\.\d+)?(?![\w$])")
_PLACEHOLDER = re.compile(r"%s|%\(\w+\)s|\$\d+")
_LIST = re.compile(r"\(\s*\?(?:\s*,\s*\?)+\s*\)")
_SPACE = re.compile(r"\s+")


def sql_shape(sql: str) -> str:
    """The statement with every literal and parameter as ``?`` and ``IN`` lists collapsed:
    the same query with other values is the same shape, and no value is ever shown."""
    shape = _STRING.sub("?", sql)
    shape = _PLACEHOLDER.sub("?", shape)
    shape = _NUMBER.sub("?", shape)
    shape = _LIST.sub("(?, ...)", shape)
    shape = _SPACE.sub(" ", shape).strip()
    return shape if len(shape) <= SHAPE_CHARS else shape[: SHAPE_CHARS - 3] + "..."


def note_repeated_query(checkout: Checkout, sql: str) -> None:
    """Called by the cursor for each query past the N+1 threshold: count the statement, and
    remember where each distinct one was first run (a frame walk per distinct statement)."""
    if not isinstance(sql, str):  # psycopg's sql.Composed: no shape to show
        return
    counts = checkout.sql_counts
    if counts is None:
        counts = checkout.sql_counts = {}
    entry = counts.get(sql)
    if entry is not None:
        entry[0] += 1
    elif len(counts) < MAX_SQL_KINDS:
        counts[sql] = [
            1,
            stacks.capture(2, guard_settings.STACK_DEPTH) if guard_settings.CAPTURE_STACKS else (),
        ]


# --- The profile -------------------------------------------------------------------------------


class LabelStats:
    """One label's totals. Written by the threads returning its checkouts, without a lock."""

    __slots__ = (
        "db",
        "held",
        "idle_sites",
        "n1_checkouts",
        "n1_count",
        "n1_queries",
        "n1_sql",
        "n1_stack",
        "queries",
        "queries_max",
        "query_hist",
        "retries",
        "stack",
        "tx",
        "wait_hist",
    )

    def __init__(self, stack: stacks.RawStack = ()) -> None:
        self.held = 0.0  # pool-seconds: checkout to return
        self.db = 0.0  # of those, seconds with a query (or commit) running
        self.tx = 0.0  # of those, seconds inside a transaction
        self.queries = 0
        self.queries_max = 0
        self.query_hist = [0] * (len(QUERY_BOUNDS) + 1)
        self.wait_hist = [0] * (len(WAIT_BOUNDS) + 1)
        self.retries = 0
        self.stack = stack  # the first checkout's acquire stack: where this label takes connections
        self.n1_checkouts = 0  # checkouts past the N+1 threshold
        self.n1_queries = 0  # queries of the worst of them
        self.n1_sql: str | None = None  # its most repeated statement (raw: shaped when shown)
        self.n1_count = 0  # how often that statement ran in that checkout
        self.n1_stack: stacks.RawStack = ()
        self.idle_sites: dict[str, int] = {}  # where holders were found waiting -> times

    @property
    def checkouts(self) -> int:
        """Checkouts returned: each is counted once in the queries-per-checkout histogram."""
        return sum(self.query_hist)

    def merge(self, other: LabelStats) -> None:
        self.held += other.held
        self.db += other.db
        self.tx += other.tx
        self.queries += other.queries
        self.queries_max = max(self.queries_max, other.queries_max)
        self.query_hist = [a + b for a, b in zip(self.query_hist, other.query_hist, strict=True)]
        self.wait_hist = [a + b for a, b in zip(self.wait_hist, other.wait_hist, strict=True)]
        self.retries += other.retries
        self.n1_checkouts += other.n1_checkouts
        if other.n1_queries > self.n1_queries:
            self.n1_queries, self.n1_sql = other.n1_queries, other.n1_sql
            self.n1_count, self.n1_stack = other.n1_count, other.n1_stack
        for site, n in other.idle_sites.items():
            self.idle_sites[site] = self.idle_sites.get(site, 0) + n


class TopRow(TypedDict):
    """One label of one alias as published (``aliases.<alias>.top[]``); cumulative since the
    pool opened. Histograms follow :data:`QUERY_BOUNDS` and :data:`WAIT_BOUNDS`."""

    label: str
    checkouts: int
    held_s: float
    db_s: float
    tx_s: float
    queries: int
    queries_max: int
    query_hist: list[int]
    wait_hist: list[int]
    retries: int
    origin: str | None  # where the label takes its connections
    n1_checkouts: int
    n1_queries: int
    n1_count: int
    n1_shape: str | None
    n1_site: str | None
    idle_site: str | None  # where its holders were found waiting between queries, most often
    idle_samples: int


class Profile:
    """The per-label statistics of one pool."""

    def __init__(self) -> None:
        self._labels: dict[str, LabelStats] = {}
        # Raw keys (request labels, contexts, threads) -> their label's stats; a cache, bounded.
        self._by_key: dict[str | threading.Thread, LabelStats] = {}
        self.other = LabelStats()
        # Guards admitting a new label and evicting into "other": rare, never per checkout.
        self._lock = threading.Lock()
        # Contexts without a scope (tasks, threads) that met an exhausted pool -> when.
        self._exhausted: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._labels)

    def fold(self, checkout: Checkout, now: float, held: float) -> None:
        """Add a checkout returned at ``now`` after ``held`` seconds to its label
        (``Ledger.remove``'s hot path: every line here runs on every return)."""
        scope = checkout.scope
        # One dict lookup in the common case: the raw key (a request's label, else the context
        # or the thread) -> its LabelStats, so a label is worked out once per key, not per return.
        key = scope.label if scope is not None else (checkout.context or checkout.thread)
        stats = self._by_key.get(key) or self._stats_for(key, checkout)
        queries = checkout.queries
        stats.held += held
        stats.db += checkout.db_time
        stats.queries += queries
        if queries > stats.queries_max:
            stats.queries_max = queries
        try:  # the checkouts are counted here too: their sum
            stats.query_hist[_QUERY_BUCKET[queries]] += 1
        except IndexError:  # past the table: rare
            stats.query_hist[bisect_left(QUERY_BOUNDS, queries)] += 1
        # Compared inline where most waits fall: inside a checkout, with the caches as libpq and the
        # kernel leave them, a call of bisect_left() costs about 0.9 us (bench_checkout.py --in-context).
        wait = checkout.wait
        if wait <= _WAIT_FIRST:
            stats.wait_hist[0] += 1
        elif wait <= _WAIT_SECOND:
            stats.wait_hist[1] += 1
        else:
            stats.wait_hist[bisect_left(WAIT_BOUNDS, wait)] += 1
        if checkout.tx_started is not None:
            stats.tx += checkout.tx_time + (now - checkout.tx_started)
        elif checkout.tx_time:
            stats.tx += checkout.tx_time
        if scope is not None:
            exhausted = scope.exhausted_at
            if exhausted is not None and exhausted <= checkout.started:
                scope.exhausted_at = None
                stats.retries += 1
        elif self._exhausted:
            self._retried(stats, checkout)
        if checkout.sql_counts is not None:
            self._n_plus_one(stats, checkout)
        if checkout.idle_site is not None:
            self._idle(stats, checkout.idle_site)

    def _stats_for(self, key: str | threading.Thread, checkout: Checkout) -> LabelStats:
        if isinstance(key, threading.Thread):
            label = plain_label("thread " + key.name)
        else:
            label = key if checkout.scope is not None else plain_label(key)
        with self._lock:
            stats = self._labels.get(label)
            if stats is None:
                if len(self._labels) >= 2 * max(1, int(guard_settings.PROFILE_TOP)):
                    self._evict()
                stats = self._labels[label] = LabelStats(checkout.stack)
            if len(self._by_key) >= KEY_CACHE:
                self._by_key = {}
            self._by_key[key] = stats
            return stats

    def _evict(self) -> None:
        """Keep the larger half by pool-seconds; fold the rest into ``other``."""
        ranked = sorted(self._labels.items(), key=lambda item: -item[1].held)
        keep = len(ranked) // 2
        for _, stats in ranked[keep:]:
            self.other.merge(stats)
        self._labels = dict(ranked[:keep])
        self._by_key = {}  # it may point at evicted stats

    def _retried(self, stats: LabelStats, checkout: Checkout) -> None:
        context = checkout.context
        exhausted = self._exhausted.get(context) if context is not None else None
        if exhausted is not None and exhausted <= checkout.started:
            self._exhausted.pop(context, None)  # type: ignore[arg-type]
            stats.retries += 1

    def mark_exhausted(self, now: float) -> None:
        """The current request or task was refused a connection: its next checkout is a retry."""
        scope = _scope.get()
        if scope is not None:
            scope.exhausted_at = now
            return
        context = current_context()
        if context is not None:
            with self._lock:
                if len(self._exhausted) >= LABEL_CACHE:
                    self._exhausted.clear()
                self._exhausted[context] = now

    @staticmethod
    def _n_plus_one(stats: LabelStats, checkout: Checkout) -> None:
        stats.n1_checkouts += 1
        if checkout.queries > stats.n1_queries and checkout.sql_counts:
            sql, (count, stack) = max(checkout.sql_counts.items(), key=lambda item: item[1][0])
            stats.n1_queries, stats.n1_sql, stats.n1_count, stats.n1_stack = (
                checkout.queries,
                sql,
                count,
                stack,
            )

    @staticmethod
    def _idle(stats: LabelStats, site: str) -> None:
        sites = stats.idle_sites
        if site in sites or len(sites) < MAX_SITES:
            sites[site] = sites.get(site, 0) + 1

    def rows(self, limit: int | None = None) -> list[TopRow]:
        """The labels by pool-seconds, the first ``limit`` (default ``PROFILE_TOP``) and then
        ``other`` (the rest plus everything evicted earlier), when it has anything."""
        limit = int(guard_settings.PROFILE_TOP) if limit is None else limit
        with self._lock:
            ranked = sorted(self._labels.items(), key=lambda item: -item[1].held)
            other = LabelStats()
            other.merge(self.other)
        for _, stats in ranked[limit:]:
            other.merge(stats)
        rows = [as_row(label, stats) for label, stats in ranked[:limit]]
        if other.checkouts:
            rows.append(as_row(OTHER, other))
        return rows

    def label_totals(self) -> dict[str, tuple[float, float]]:
        """(pool-seconds, database-seconds) per kept label, and ``other`` for the evicted ones."""
        with self._lock:
            out = {label: (stats.held, stats.db) for label, stats in self._labels.items()}
            out[OTHER] = (self.other.held, self.other.db)
        return out

    def totals(self) -> tuple[float, float]:
        """(pool-seconds, database-seconds) over every label: the alias's busy ratio's parts."""
        with self._lock:
            every = [*self._labels.values(), self.other]
        return sum(s.held for s in every), sum(s.db for s in every)


def as_row(label: str, stats: LabelStats) -> TopRow:
    idle_site, idle_samples = max(stats.idle_sites.items(), key=lambda item: item[1], default=(None, 0))
    return {
        "label": label,
        "checkouts": stats.checkouts,
        "held_s": round(stats.held, 6),
        "db_s": round(stats.db, 6),
        "tx_s": round(stats.tx, 6),
        "queries": stats.queries,
        "queries_max": stats.queries_max,
        "query_hist": list(stats.query_hist),
        "wait_hist": list(stats.wait_hist),
        "retries": stats.retries,
        "origin": stacks.origin(stats.stack),
        "n1_checkouts": stats.n1_checkouts,
        "n1_queries": stats.n1_queries,
        "n1_count": stats.n1_count,
        "n1_shape": sql_shape(stats.n1_sql) if stats.n1_sql else None,
        "n1_site": stacks.call_chain(stats.n1_stack),
        "idle_site": idle_site,
        "idle_samples": idle_samples,
    }


# --- Where the holders wait: sampled by the watchdog --------------------------------------------


def sample_idle(checkouts: Iterable[Checkout], now: float, min_idle: float = IDLE_SAMPLE_MIN) -> int:
    """Look where each holder is while it holds a connection without a query running.

    The holder's current frame names the place the connection waits on: the external call,
    the template, the ``sleep``. Run by the watchdog (off the checkout path, see
    :mod:`django_poolguard.watchdog.idle_sites`); a checkout idle across several samples keeps
    the latest place. Returns the checkouts sampled.
    """
    idle = [
        checkout
        for checkout in checkouts
        if checkout.query_started <= checkout.last_query  # no query running
        and now - max(checkout.last_query, checkout.started) >= min_idle
    ]
    if not idle:
        return 0
    frames = current_frames()
    sampled = 0
    for checkout in idle:
        frame = frames.get(checkout.thread.ident)  # type: ignore[arg-type]
        if frame is None:
            continue
        site = stacks.call_chain(stacks.capture_frame(frame, guard_settings.STACK_DEPTH))
        if site is not None:
            checkout.idle_site = site
            sampled += 1
    return sampled


def busy_ratio(held: float, db: float) -> float | None:
    """The database's share of held pool time; ``None`` before any connection was returned."""
    return round(min(db / held, 1.0), 4) if held > 0 else None


__all__ = [
    "OTHER",
    "Profile",
    "Scope",
    "TopRow",
    "busy_ratio",
    "current_scope",
    "plain_label",
    "route_label",
    "sample_idle",
    "sql_shape",
]
