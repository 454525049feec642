"""The checkout ledger: who holds each of a pool's connections, since when, and why.

One ``Ledger`` per pool. Entries exist only while a connection is checked out, so its size
is bounded by ``max_size`` whatever the traffic; recent acquire and hold times live in
fixed-size rings for percentiles and for exporters that read them incrementally.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Callable
from time import monotonic
from typing import Any

from django_poolguard._compat import count_value
from django_poolguard.conf import guard_settings
from django_poolguard.engine import stacks
from django_poolguard.engine.context import bounded
from django_poolguard.engine.profile import Profile, _scope

RING_SIZE = 4096  # samples kept for percentiles; a power of two so the index is a mask
_MASK = RING_SIZE - 1


class Checkout:
    """One borrowed connection. Mutated only by its holder (``last_used``, ``tx_*``) and the watchdog."""

    __slots__ = (
        "__weakref__",
        "connection",
        "context",
        "db_time",
        "dropped_seen",
        "held_reason",
        "hoard_reported",
        "idle_site",
        "last_query",
        "last_used",
        "queries",
        "query_started",
        "reported",
        "returned",
        "scope",
        "sql_counts",
        "stack",
        "started",
        "thread",
        "tx_stack",
        "tx_started",
        "tx_time",
        "wait",
        "wrapper_ref",
    )

    def __init__(
        self,
        connection: Any,
        wait: float,
        stack: stacks.RawStack,
        context: str | None,
        started: float | None = None,
    ):
        self.connection = connection  # a strong reference: a dead holder's connection stays reclaimable
        self.thread = threading.current_thread()
        self.wrapper_ref: weakref.ref[Any] | None = None
        # When the pool handed it over (the pool's clock read, when it passes it: one read less).
        self.started = self.last_used = monotonic() if started is None else started
        self.wait = wait
        self.stack = stack
        self.context = context
        self.tx_started: float | None = None
        self.tx_stack: stacks.RawStack | None = None
        self.reported: float | None = None  # when the watchdog reported it as a leak
        self.hoard_reported: float | None = None
        self.returned: float | None = None  # when it came back, for "returned after N s" reports
        self.dropped_seen = False  # the watchdog saw its wrapper no longer holding it (leaks._orphaned)
        # In transaction release mode: why the holder kept it when it could have given it back.
        self.held_reason: str | None = None
        # The pool-time profile's per-checkout figures, kept by the cursor (engine/profile.py).
        self.scope = _scope.get()
        self.queries = 0
        self.db_time = 0.0  # seconds with a query or commit running
        self.query_started = 0.0  # when the last query began: it runs while this is > last_query
        self.last_query = 0.0  # when the last query ended
        self.tx_time = 0.0  # seconds in finished transactions
        self.sql_counts: dict[str, list[Any]] | None = None  # past the N+1 threshold only
        self.idle_site: str | None = None  # where the watchdog last found the holder between queries

    @property
    def held(self) -> float:
        return monotonic() - self.started

    @property
    def alive(self) -> bool:
        """Whether the holder thread runs. Threads started outside ``threading`` (mod_wsgi, some
        C extensions) are "dummy" threads whose liveness Python cannot know: alive, never reclaimed."""
        try:
            return self.thread.is_alive()
        except Exception:
            return True

    @property
    def holder(self) -> str:
        """The holder thread's name, bounded: any code may name a thread."""
        return bounded(self.thread.name)

    @property
    def label(self) -> str:
        """The context, or the thread for checkouts made outside any request, task or command."""
        return self.context or f"thread {self.holder}"

    @property
    def origin(self) -> str | None:
        return stacks.origin(self.stack)


class AtomicCounter:
    """An integer many threads bump without a lock: ``next()`` on ``itertools.count`` is a
    single C call, atomic under the GIL. A lock here convoys checkouts when a thread is
    descheduled while holding it (measured: -25 % throughput at 8 threads)."""

    __slots__ = ("_count", "increment")

    def __init__(self) -> None:
        self._count = itertools.count()
        #: Add one; return the value before. The iterator's own ``__next__``: a C call, no
        #: Python frame (twice per checkout).
        self.increment: Callable[[], int] = self._count.__next__

    @property
    def value(self) -> int:
        return count_value(self._count)


class Ledger:
    """The checkouts of one pool plus its counters.

    The checkout path takes no lock: dict assignment and pop, list item assignment and
    :class:`AtomicCounter` are each atomic under the GIL. Rare events (timeouts, leaks)
    use ``count()``, which does.
    """

    def __init__(self) -> None:
        self._checkouts: dict[int, Checkout] = {}
        #: The checkout of the connection with this ``id()``, if it is out: the dict's own ``get``,
        #: a C call with no Python frame (the backend calls it once per checkout).
        self.checkout_of: Callable[[int], Checkout | None] = self._checkouts.get
        self._acquired = AtomicCounter()
        self._returned = AtomicCounter()
        # Guards the rare-event counters below (read-modify-write is not atomic).
        self._lock = threading.Lock()
        self.timeouts_total = 0  # checkouts that waited the whole pool timeout
        self.rejected_total = 0  # checkouts refused at once: max_waiting clients already queued
        self.shed_total = 0  # requests the middleware answered 503 because of this pool
        self.shed_by_priority: dict[str, int] = {}  # the same by the request's priority class
        self.leaks_total = 0
        self.hoards_total = 0
        self.invariant_violations_total = 0  # slot check faults: lost slots, surplus, wedged pool (slots.py)
        # "thread_exited" / "wrapper_collected" / "connection_dropped" -> count
        self.reclaimed_by_reason: dict[str, int] = {}
        # Transaction release mode: checkouts given back between transactions (one per release,
        # so no lock), and connections pinned to their request or task, by what pinned them.
        self._released = AtomicCounter()
        self.pinned_by_reason: dict[str, int] = {}
        self._acquire_ring = [0.0] * RING_SIZE
        self._held_ring = [0.0] * RING_SIZE
        self.profile = Profile()

    @property
    def acquired_total(self) -> int:
        return self._acquired.value

    @property
    def returned_total(self) -> int:
        return self._returned.value

    @property
    def released_total(self) -> int:
        return self._released.value

    @property
    def reclaimed_total(self) -> int:
        return sum(self.reclaimed_by_reason.values())

    def add(
        self,
        connection: Any,
        wait: float,
        stack: stacks.RawStack,
        context: str | None,
        started: float | None = None,
    ) -> Checkout:
        checkout = Checkout(connection, wait, stack, context, started)
        self._checkouts[id(connection)] = checkout
        self._acquire_ring[self._acquired.increment() & _MASK] = wait
        return checkout

    def remove(self, connection: Any) -> Checkout | None:
        checkout = self._checkouts.pop(id(connection), None)
        if checkout is not None:
            checkout.returned = now = monotonic()  # for "returned after N s" reports
            self._held_ring[self._returned.increment() & _MASK] = held = now - checkout.started
            if guard_settings.PROFILE:  # the pool-time profile
                self.profile.fold(checkout, now, held)
        return checkout

    def checkouts(self) -> list[Checkout]:
        """The current checkouts, oldest first."""
        current = list(self._checkouts.values())
        current.sort(key=lambda c: c.started)
        return current

    def __len__(self) -> int:
        return len(self._checkouts)

    def count(self, counter: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, counter, getattr(self, counter) + n)

    def count_shed(self, priority: str) -> None:
        with self._lock:
            self.shed_total += 1
            self.shed_by_priority[priority] = self.shed_by_priority.get(priority, 0) + 1

    def count_release(self) -> None:
        self._released.increment()

    def count_pinned(self, reason: str) -> None:
        with self._lock:
            self.pinned_by_reason[reason] = self.pinned_by_reason.get(reason, 0) + 1

    def count_reclaimed(self, reason: str) -> None:
        with self._lock:
            self.reclaimed_by_reason[reason] = self.reclaimed_by_reason.get(reason, 0) + 1

    def acquire_samples(self) -> list[float]:
        """Up to the last ``RING_SIZE`` acquire waits, in seconds."""
        return self._recent(self._acquire_ring, self.acquired_total)

    def held_samples(self) -> list[float]:
        """Up to the last ``RING_SIZE`` hold times, in seconds."""
        return self._recent(self._held_ring, self.returned_total)

    def samples_since(self, kind: str, seq: int) -> tuple[list[float], int]:
        """Samples recorded after sequence number ``seq`` and the new sequence number.

        For exporters that observe every sample once: ``kind`` is ``"acquire"`` or ``"held"``.
        A reader that falls more than ``RING_SIZE`` behind gets the newest ``RING_SIZE``; a
        sample whose writer is mid-flight may read as its slot's previous value.
        """
        ring, total = (
            (self._acquire_ring, self.acquired_total)
            if kind == "acquire"
            else (self._held_ring, self.returned_total)
        )
        start = max(seq, total - RING_SIZE)
        return [ring[i & _MASK] for i in range(start, total)], total

    @staticmethod
    def _recent(ring: list[float], total: int) -> list[float]:
        return list(ring) if total >= RING_SIZE else ring[:total]


def percentiles(samples: list[float], points: tuple[int, ...] = (50, 95, 99)) -> dict[str, float]:
    """Nearest-rank percentiles in milliseconds; zeros when there is no sample yet."""
    if not samples:
        return {f"p{p}": 0.0 for p in points}
    ordered = sorted(samples)
    last = len(ordered) - 1
    return {f"p{p}": round(ordered[min(last, (len(ordered) * p + 99) // 100 - 1)] * 1000, 3) for p in points}
