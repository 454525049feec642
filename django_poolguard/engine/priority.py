"""Priority classes: which checkouts keep their connections when a pool runs short.

Every checkout has a class, ``critical``, ``normal`` (the default) or ``low``, held in a
``ContextVar`` like the checkout context: the middleware sets it from the route, the Celery
integration from the task name (both via ``POOLGUARD["PRIORITIES"]``), and :class:`priority`
sets it for a block or a function.

An alias with ``OPTIONS["poolguard"]["reserve"] = {"critical": 2, "normal": 1}`` gets an
:class:`Admission` gate. "Free" means idle connections plus those the pool may still open:

* ``critical`` takes any free connection;
* ``normal`` needs more than ``reserve["critical"]`` free: the last 2 stay for critical work;
* ``low`` needs more than ``reserve["critical"] + reserve["normal"]`` free, and is refused at once
  (``PoolQueueFull``, a 503 with ``Retry-After`` under the middleware) when it does not find them:
  waiting in line would only hold a server thread that a better request needs;
* ``normal`` and ``critical`` without enough free connections wait in psycopg_pool's queue; a
  returned connection goes to the best eligible waiter: lowest class first, first come first served
  within a class;
* aging, so no class starves in line: a waiter's place in the line rises one class for every
  quarter of the pool's ``timeout`` it has waited (a ``low`` waiter is served like a ``critical``
  one after ``timeout / 2``), so newer checkouts of a better class overtake it for a bounded time
  only. Aging orders the line; it never opens the reserve to a lower class, and no checkout waits
  past its ``timeout``.

The gate decides inside psycopg_pool's own lock (its ``_get_ready_connection`` and ``_add_to_pool``),
so the uncontended checkout takes no other lock; without a reserve none of this runs. While an idle
connection is there for a checkout's class, the checkout is psycopg_pool's own plus one count for the
class (a wait of 0, implied), and a return asks the gate only when clients wait.
"""

from __future__ import annotations

import contextvars
import fnmatch
import re
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from time import monotonic
from typing import Any, TypeVar

from psycopg_pool import TooManyRequests

from django_poolguard import _compat
from django_poolguard.conf import guard_settings
from django_poolguard.engine.context import ContextBlock
from django_poolguard.rules import PRIORITY_NAMES

#: The classes, best first: a class's rank is its index.
PRIORITY_CLASSES: tuple[str, ...] = PRIORITY_NAMES
CRITICAL, NORMAL, LOW = PRIORITY_CLASSES
RANK = {name: rank for rank, name in enumerate(PRIORITY_CLASSES)}
NORMAL_RANK = RANK[NORMAL]
#: A waiter's class rises one level per this fraction of the pool's timeout spent waiting.
AGING_FRACTION = 0.25
RING_SIZE = 1024  # acquire waits read back per class, for percentiles; a power of two (index mask)
_MASK = RING_SIZE - 1

_current: contextvars.ContextVar[int] = contextvars.ContextVar("poolguard_priority", default=NORMAL_RANK)

F = TypeVar("F", bound=Callable[..., Any])

#: The rank of a checkout made now. The ContextVar's own ``get``: a C call, no Python frame, as
#: the gate reads it on every checkout under the pool's lock.
current_rank: Callable[[], int] = _current.get


def current_priority() -> str:
    """The class of a checkout made now: the innermost :class:`priority`, else ``normal``."""
    return PRIORITY_CLASSES[current_rank()]


def set_priority(name: str) -> contextvars.Token[int]:
    """Switch to class ``name`` until :func:`reset_priority`; for integrations driven by signals."""
    return _current.set(RANK[name])


def reset_priority(token: contextvars.Token[int]) -> None:
    _current.reset(token)


class priority(ContextBlock):  # lower case: used like a function, @priority("critical")
    """Run a block or a function in a priority class::

        with priority("low"):
            build_export()

        @priority("critical")
        def checkout(request): ...

    Blocks nest, the innermost wins (a decorated view overrides its route's class); each thread,
    asyncio task and greenlet has its own class.
    """

    _var = _current

    def __init__(self, name: str) -> None:
        if name not in RANK:
            raise ValueError(f"priority({name!r}): the classes are {', '.join(map(repr, PRIORITY_CLASSES))}.")
        self.name = name

    def _value(self) -> int:
        return RANK[self.name]


# --- Classification: POOLGUARD["PRIORITIES"] -------------------------------------------------


@dataclass(frozen=True)
class Classifier:
    """``POOLGUARD["PRIORITIES"]`` compiled: patterns starting with ``/`` match the request path,
    the others the URL name (``"reports:*"``, namespaces included) or the Celery task name."""

    paths: tuple[tuple[re.Pattern[str], int], ...]
    names: tuple[tuple[re.Pattern[str], int], ...]

    @classmethod
    def compile(cls, priorities: dict[str, Iterable[str]]) -> Classifier:
        paths: list[tuple[re.Pattern[str], int]] = []
        names: list[tuple[re.Pattern[str], int]] = []
        # Best class first: a route both critical and low patterns match is critical.
        for name in PRIORITY_CLASSES:
            for pattern in priorities.get(name, ()):
                target = paths if pattern.startswith("/") else names
                target.append((re.compile(fnmatch.translate(pattern)), RANK[name]))
        return cls(tuple(paths), tuple(names))

    def for_path(self, path: str) -> int | None:
        for pattern, rank in self.paths:
            if pattern.match(path):
                return rank
        return None

    def for_name(self, name: str | None) -> int | None:
        if name:
            for pattern, rank in self.names:
                if pattern.match(name):
                    return rank
        return None


_compiled: tuple[Any, Classifier | None] = (None, None)


def classifier() -> Classifier | None:
    """``POOLGUARD["PRIORITIES"]`` compiled, ``None`` when empty; recompiled when the setting changes."""
    global _compiled
    priorities = guard_settings.PRIORITIES
    source, compiled = _compiled
    if source is not priorities:
        compiled = Classifier.compile(priorities) if priorities else None
        _compiled = (priorities, compiled)
    return compiled


def rank_for_task(name: str | None) -> int | None:
    """The class ``POOLGUARD["PRIORITIES"]`` gives Celery task ``name``, ``None`` when none does."""
    rules = classifier()
    return rules.for_name(name) if rules is not None else None


# --- The gate ------------------------------------------------------------------------------


class PriorityShed(TooManyRequests):
    """A checkout refused at once: only connections reserved for better classes were free."""

    def __init__(self, message: str, *, free: int) -> None:
        super().__init__(message)
        self.free = free


class PriorityEvicted(TooManyRequests):
    """A waiting checkout refused to make room in a full queue for a better class."""


@dataclass(frozen=True)
class Waiter:
    rank: int
    since: float


class WaitingQueue(deque):  # type: ignore[type-arg]
    """psycopg_pool's queue of waiting clients, which also notes each one's class on arrival.

    ``append`` runs in the arriving thread under the pool's lock (``_getconn_unchecked``), the
    one moment the client and its class meet; ``WaitingClient`` has ``__slots__``, hence the dict.
    """

    def __init__(self) -> None:
        super().__init__()
        self.waiters: dict[int, Waiter] = {}

    def append(self, client: Any) -> None:
        self.waiters[id(client)] = Waiter(current_rank(), monotonic())
        super().append(client)

    def drop(self, client: Any) -> None:
        self.remove(client)
        self.waiters.pop(id(client), None)

    def popleft(self) -> Any:
        client = super().popleft()
        self.waiters.pop(id(client), None)
        return client

    def clear(self) -> None:
        super().clear()
        self.waiters.clear()


class Admission:
    """One pool's priority gate. The methods above "Readers" run under the pool's own lock, which
    protects the waiting queue and the counts written there."""

    def __init__(self, reserve: dict[str, int], timeout: float) -> None:
        critical = reserve.get(CRITICAL, 0)
        normal = reserve.get(NORMAL, 0)
        self.reserve = {CRITICAL: critical, NORMAL: normal}
        #: The free connections each class needs *more* than, by rank.
        self.floor = (0, critical, critical + normal)
        #: The largest floor: with more idle connections than this, every class is admitted.
        self.open_above = critical + normal
        self.age_step = max(timeout * AGING_FRACTION, 0.001)
        # Written under the pool's lock only, so plain ints; readers see each item whole (GIL).
        self.refused = [0] * len(PRIORITY_CLASSES)
        #: Checkouts served, by rank. A checkout served at once only adds one here (the pool's
        #: fast path does it inline): its wait, 0, is implied by the waits below.
        self.served = [0] * len(PRIORITY_CLASSES)
        # The last RING_SIZE checkouts that waited, by rank: how long, and their place in `served`
        # (a sample's sequence number). A window of the last n served is these plus 0s.
        self._waits = [[0.0] * RING_SIZE for _ in PRIORITY_CLASSES]
        self._seqs = [[-1] * RING_SIZE for _ in PRIORITY_CLASSES]
        self._waited = [0] * len(PRIORITY_CLASSES)  # entries ever written to each ring

    def describe(self) -> str:
        """``"the last 2 for critical work, 1 more not for low work"``."""
        critical, normal = self.reserve[CRITICAL], self.reserve[NORMAL]
        parts = [f"the last {critical} for critical work"] if critical else []
        if normal:
            parts.append(f"{normal} more not for low work")
        return ", ".join(parts)

    # Under the pool's lock ------------------------------------------------------------------

    def admits(self, rank: int, free: int) -> bool:
        return free > self.floor[rank]

    def refuse(self, rank: int, free: int) -> PriorityShed:
        self.refused[rank] += 1  # under the pool's lock
        return PriorityShed(
            f"only {free} connection(s) free, kept for better work ({self.describe()})", free=free
        )

    def effective_rank(self, waiter: Waiter | None, now: float) -> int:
        if waiter is None:
            return NORMAL_RANK
        return max(0, waiter.rank - int((now - waiter.since) / self.age_step))

    def pick(self, queue: WaitingQueue, free: int) -> Any | None:
        """The waiter a returned connection goes to (``free`` counts it): among those whose own
        class may take it, the best aged class, first come first served within a class; ``None``
        if none may. Aging orders the line; it never opens the reserve to a lower class."""
        now = monotonic()
        best: Any = None
        best_rank = len(PRIORITY_CLASSES)
        for client in list(queue):
            if not _compat.client_pending(client):  # timed out: psycopg_pool leaves it queued
                queue.drop(client)
                continue
            waiter = queue.waiters.get(id(client))
            if not self.admits(NORMAL_RANK if waiter is None else waiter.rank, free):
                continue
            rank = self.effective_rank(waiter, now)
            if rank < best_rank:
                best, best_rank = client, rank
                if rank == 0:
                    break
        return best

    def evict_for(self, rank: int, queue: WaitingQueue) -> bool:
        """The queue is full: refuse its worst waiter if it is of a lower class than ``rank``."""
        now = monotonic()
        worst: Any = None
        worst_rank = rank
        for client in list(queue):
            if not _compat.client_pending(client):
                queue.drop(client)
                return True  # a dead entry made room
            waiter_rank = self.effective_rank(queue.waiters.get(id(client)), now)
            if waiter_rank >= worst_rank and waiter_rank > rank:
                worst, worst_rank = client, waiter_rank  # the latest of the worst class
        if worst is None:
            return False
        queue.drop(worst)
        self.refused[worst_rank] += 1
        _compat.fail_client(
            worst, PriorityEvicted(f"refused to make room for a {PRIORITY_CLASSES[rank]} checkout")
        )
        return True

    def observe(self, rank: int, waited: float) -> None:
        """Record a served checkout's acquire wait under its class: from ``_get_ready_connection``
        (served at once, ``waited`` 0) or ``_add_to_pool`` (handed a connection), under the pool's lock."""
        served = self.served
        seq = served[rank]
        if waited > 0.0:
            index = self._waited[rank]
            self._waits[rank][index & _MASK] = waited
            self._seqs[rank][index & _MASK] = seq
            self._waited[rank] = index + 1  # the sample first: a reader never sees a count ahead of it
        served[rank] = seq + 1

    # Readers, from any thread ------------------------------------------------------------------

    def samples_since(self, rank: int, seq: int) -> tuple[list[float], int]:
        """Class ``rank``'s acquire waits after sequence number ``seq`` (at most the last
        ``RING_SIZE``), and the new one (as ``Ledger.samples_since``): the waits recorded in that
        window, and a 0 for each checkout served at once in it."""
        total = self.served[rank]
        start = max(seq, total - RING_SIZE)
        if start >= total:
            return [], total
        waits, seqs = self._waits[rank], self._seqs[rank]
        samples: list[float] = []
        written = self._waited[rank]
        # Newest first, back to the window's start; a wait recorded after `total` was read is
        # left for the next call. At most RING_SIZE entries: the window is no longer.
        for index in range(written - 1, max(written - RING_SIZE, 0) - 1, -1):
            sample_seq = seqs[index & _MASK]
            if sample_seq < start:
                break
            if sample_seq < total:
                samples.append(waits[index & _MASK])
        samples.reverse()
        return [0.0] * (total - start - len(samples)) + samples, total

    def acquire_samples(self, rank: int) -> list[float]:
        return self.samples_since(rank, 0)[0]

    def totals(self) -> dict[str, PriorityTotals]:
        return {
            name: PriorityTotals(acquired=self.served[rank], refused=self.refused[rank])
            for rank, name in enumerate(PRIORITY_CLASSES)
        }


@dataclass(frozen=True)
class PriorityTotals:
    acquired: int  # checkouts served
    refused: int  # refused at once by the reserve, or evicted from a full queue


__all__ = [
    "CRITICAL",
    "LOW",
    "NORMAL",
    "PRIORITY_CLASSES",
    "Admission",
    "Classifier",
    "PriorityEvicted",
    "PriorityShed",
    "current_priority",
    "priority",
]
