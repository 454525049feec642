"""The guarded pool: psycopg_pool's ``ConnectionPool`` with a checkout ledger, and this
process's registry of pools (one per alias), which never crosses ``fork()``.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import weakref
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from time import monotonic
from typing import Any

from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout, TooManyRequests

from django_poolguard import _compat
from django_poolguard._compat import AddConnection, MaintenanceTask, ReturnConnection
from django_poolguard.conf import AliasConfig, guard_settings
from django_poolguard.engine import stacks
from django_poolguard.engine.context import bounded, current_context
from django_poolguard.engine.ledger import Ledger
from django_poolguard.engine.priority import (
    PRIORITY_CLASSES,
    Admission,
    PriorityEvicted,
    PriorityShed,
    WaitingQueue,
    current_rank,
)
from django_poolguard.escaping import escape_controls
from django_poolguard.exceptions import PoolExhausted, PoolQueueFull

logger = logging.getLogger("django_poolguard")

SLOTS_CRITICAL_FOR = 60.0  # s the alias's health stays critical after the slot check found a fault


class GuardedPool(ConnectionPool):  # type: ignore[type-arg]
    """A ``ConnectionPool`` that records every checkout in a :class:`Ledger`."""

    #: The priority gate: only :class:`PrioritizedPool` (an alias with a ``reserve``) has one.
    admission: Admission | None = None

    #: The fleet budget's cap (an alias with ``fleet_budget``): the pool never counts more
    #: connections than this; None without a budget. Moved only by the lease keeper.
    lease_limit: int | None = None
    #: Called (under the pool's lock: it must only set an Event) when a client waits at the cap.
    lease_wanted: Callable[[], None] | None = None
    #: Called (outside the pool's lock; it must only set an Event) when a connection coming back
    #: over the lease was closed: the lease keeper can record the smaller lease at once.
    lease_freed: Callable[[], None] | None = None
    #: The lease as published (a ``fleet.schema.LeaseSnapshot``), set by the lease keeper.
    lease_view: Callable[[], Any] | None = None

    def __init__(self, *args: Any, config: AliasConfig, **kwargs: Any) -> None:
        self.config = config
        # What OPTIONS["pool"] asks for; with a fleet budget the pool runs within its lease.
        self.configured_min = int(kwargs.get("min_size", 4))
        configured_max = kwargs.get("max_size")
        self.configured_max = int(configured_max if configured_max is not None else self.configured_min)
        if getattr(config, "fleet_budget", None) is not None:
            # Nothing opens before the first lease (taken when the pool is registered, before it opens).
            self.lease_limit = 0
            kwargs["min_size"] = 0
            kwargs["max_size"] = max(1, self.configured_max)
        self.ledger = Ledger()
        self.pid = os.getpid()
        self.created = monotonic()
        self.connect_failing = False  # the last connection attempt failed: the database is unreachable
        self.last_connect_error: str | None = None  # why it failed, password-free (see connect_error_text)
        # Rebuilds this pool's like (set by get_or_create_pool): how a wedged pool is replaced.
        self.factory: Callable[[], GuardedPool] | None = None
        # Connections in transit inside psycopg_pool: AddConnection tasks (being opened, or waiting
        # to retry) and ReturnConnection tasks (being reset), from submission until their run ends.
        # Set add/discard are atomic under the GIL: no lock, and only maintenance paths touch it.
        self._transit: set[MaintenanceTask] = set()
        # Every connection this pool opened and that still exists: a connection handed to a waiting
        # client is in neither the pool nor the ledger for a moment, but it is here; a lost one,
        # dropped with the exception that interrupted it, is not.
        self._opened_connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self.slots_broken_at: float | None = None  # when the slot check last found (and fixed) a fault
        super().__init__(*args, **kwargs)

    def slots_broken_recently(self) -> bool:
        """The slot check found a fault here within ``SLOTS_CRITICAL_FOR`` s (health is critical)."""
        at = self.slots_broken_at
        return at is not None and monotonic() - at < SLOTS_CRITICAL_FOR

    def open(self, wait: bool = False, timeout: float = 30.0) -> None:
        # Django calls open() before every checkout; once open, skip psycopg_pool's lock.
        if not self.closed and not wait:
            return
        super().open(wait=wait, timeout=timeout)

    # The hot path: one monotonic pair, a frame walk and a dict write per checkout.
    def getconn(self, timeout: float | None = None) -> Any:
        started = monotonic()
        try:
            # psycopg_pool's, named rather than super() (next in every subclass's MRO): no proxy
            # object per checkout.
            connection = ConnectionPool.getconn(self, timeout)
        except TooManyRequests as exc:
            raise self._exhausted(started, queue_full=True, cause=exc) from exc
        except PoolTimeout as exc:
            raise self._exhausted(started, queue_full=False) from exc
        try:
            now = monotonic()
            stack = (
                stacks.capture(1, guard_settings.STACK_DEPTH, _PLUMBING or _plumbing_codes())
                if guard_settings.CAPTURE_STACKS
                else ()
            )
            self.ledger.add(connection, now - started, stack, current_context(), now)
        except BaseException:
            # Nobody will ever return a connection the ledger does not know: give it back now,
            # whatever interrupted us (a bad setting, a Celery soft time limit, Ctrl-C).
            self.ledger.remove(connection)
            ConnectionPool.putconn(self, connection)
            raise
        return connection

    def putconn(self, conn: Any) -> None:
        try:
            self.ledger.remove(conn)
        finally:
            ConnectionPool.putconn(self, conn)

    def state(self) -> dict[str, int]:
        """Sizes read without the pool's lock: a consistent-enough view for monitoring."""
        stats = self.get_stats()  # psycopg_pool reads its measures without its lock too
        return {
            "min": self.min_size,
            "max": self.max_size,
            "size": stats["pool_size"],
            "in_use": len(self.ledger),
            "idle": stats["pool_available"],
            "waiting": self.waiting(),
        }

    def waiting(self) -> int:
        """Clients still waiting: psycopg_pool leaves timed-out ones queued until the next return."""
        return len(_compat.waiting_clients(self))

    def connection_errors(self) -> int:
        """Failed connection attempts since the pool was created."""
        return int(self.get_stats().get("connections_errors", 0))

    def connections_opened(self) -> int:
        """Physical connections opened (psycopg_pool counts attempts, failed ones included)."""
        stats = self.get_stats()
        return int(stats.get("connections_num", 0)) - int(stats.get("connections_errors", 0))

    def _connect(self, timeout: float | None = None) -> Any:
        # Runs on the pool's worker threads (or a caller growing the pool), never per checkout.
        try:
            connection = super()._connect(timeout)
        except Exception as exc:
            self.connect_failing = True
            self.last_connect_error = connect_error_text(exc)
            raise
        self.connect_failing = False
        self._opened_connections.add(connection)
        return connection

    def set_lease(self, limit: int) -> None:
        """Follow a fleet-budget lease: never count more than ``limit`` connections (the lease keeper)."""
        self.lease_limit = limit
        _compat.set_limits(self, min(self.configured_min, limit), max(limit, 1))

    def size_limit(self) -> int:
        """The most connections the pool may count now: ``max_size``, or its lease when lower."""
        limit = self.lease_limit
        return self.max_size if limit is None else min(self.max_size, limit)

    def grow_for_waiting(self) -> None:
        """Let clients already waiting have connections the raised cap now allows."""
        with _compat.pool_lock(self):
            _compat.grow_pool(self)

    def close_idle(self, count: int) -> int:
        """Close up to ``count`` idle connections (a lease shrank): never a busy one."""
        return _compat.close_idle(self, count) if count > 0 else 0

    # --- Slots seen from outside ------------------------------------------------------------
    # psycopg_pool's private state is read and repaired in the methods below, through _compat
    # (which says what each relies on and the versions it was checked on; tests/test_compat.py).

    def run_task(self, task: MaintenanceTask) -> None:
        if isinstance(task, (AddConnection, ReturnConnection)):
            self._transit.add(task)
            task = _TransitTask(self, task)
        super().run_task(task)

    def schedule_task(self, task: MaintenanceTask, delay: float) -> None:
        if isinstance(task, AddConnection):  # a reconnection attempt waiting for its backoff delay
            self._transit.add(task)
        super().schedule_task(task, delay)

    def count_slots(self, lock_timeout: float) -> SlotCount | None:
        """One consistent count of the pool's slots, or None if its locks stayed taken ``lock_timeout`` s.

        Taken under the pool's lock so size, idle and the tasks in transit agree; checkouts and returns
        between psycopg_pool and the ledger at this instant still show as missing (callers sample again).
        The task queue's lock is probed too: a thread that died holding it blocks every connection
        psycopg_pool would open, and whoever asks it to.
        """
        queue_lock = _compat.task_queue_lock(self)
        if not queue_lock.acquire(timeout=lock_timeout):
            return None
        queue_lock.release()
        lock = _compat.pool_lock(self)
        if not lock.acquire(timeout=lock_timeout):
            return None
        try:
            stats = self.get_stats()
            growing = _compat.pool_growing(self)
            transit = list(self._transit)
        finally:
            lock.release()
        size, idle = stats["pool_size"], stats["pool_available"]
        in_use = len(self.ledger)
        return SlotCount(
            size=size,
            idle=idle,
            in_use=in_use,
            live=sum(1 for connection in list(self._opened_connections) if not connection.closed),
            opening=sum(1 for task in transit if isinstance(task, AddConnection)),
            returning=sum(1 for task in transit if isinstance(task, ReturnConnection)),
            growing_lost=growing and not any(getattr(task, "growing", False) for task in transit),
        )

    def abandoned_waiters(self) -> list[Any]:
        """Queued clients nobody waits on any more: still unserved, but no thread sleeps on them.

        An exception that strikes a checkout after psycopg_pool queued it and outside the wait itself
        leaves its ``WaitingClient`` queued; the next connection returned would be handed to it and
        lost. A real waiter sleeps in its condition until served or timed out.
        """
        return [client for client in _compat.waiting_clients(self) if not _compat.has_sleeper(client)]

    def fail_waiters(self, clients: list[Any]) -> None:
        """Mark abandoned clients as failed, so psycopg_pool skips them when handing connections out."""
        for client in clients:
            _compat.fail_client(
                client, PoolTimeout("abandoned: the checkout was interrupted while it queued")
            )

    def restore_slots(self, missing: int, growing_lost: bool) -> None:
        """Open a new connection for each of ``missing`` lost slots, as psycopg_pool does for a
        broken one; and let the pool grow again if the task that was growing it was lost."""
        lock = _compat.pool_lock(self)
        with lock:
            if growing_lost and _compat.pool_growing(self):
                _compat.stop_growing(self)
        for _ in range(missing):
            self.run_task(AddConnection(self))
        if growing_lost:
            with lock:
                _compat.grow_pool(self)

    def discard_surplus(self, surplus: int) -> int:
        """Close up to ``surplus`` idle connections the pool does not count (a lost one came back)."""
        closing = []
        with _compat.pool_lock(self):
            while surplus > 0:
                connection = _compat.pop_idle_connection(self)
                if connection is None:
                    break
                closing.append(connection)
                surplus -= 1
        for connection in closing:
            _compat.close_pool_connection(self, connection)
        return len(closing)

    def _exhausted(
        self, started: float, *, queue_full: bool, cause: BaseException | None = None
    ) -> PoolExhausted:
        waited = monotonic() - started
        self.ledger.count("rejected_total" if queue_full else "timeouts_total")
        self.ledger.profile.mark_exhausted(started + waited)  # the next checkout is a retry
        state = self.state()
        in_use = f"{state['in_use']}/{state['max']} in use, {state['waiting']} waiting"
        priority = PRIORITY_CLASSES[current_rank()] if self.admission is not None else None
        if isinstance(cause, PriorityShed):
            head = f"pool {self.config.alias!r} refused a {priority}-priority checkout at once: {cause} ({in_use})"
        elif isinstance(cause, PriorityEvicted):
            head = f"pool {self.config.alias!r} refused a waiting {priority}-priority checkout: {cause} ({in_use})"
        elif queue_full:
            head = f"pool {self.config.alias!r} refused a checkout: {state['waiting']} requests already waiting (max_waiting={self.max_waiting}; {in_use})"
        elif state["in_use"] < state["max"] and self.connection_errors():
            reason = (
                f"; the last one failed with: {self.last_connect_error}"
                if self.last_connect_error
                else ": is the database reachable?"
            )
            head = (
                f"pool {self.config.alias!r} could not get a connection after {waited:.1f} s "
                f"({in_use}; {self.connection_errors()} failed connection attempts{reason})"
            )
        else:
            head = f"pool {self.config.alias!r} exhausted after {waited:.1f} s ({in_use})"
        holders = describe_holders(self)
        message = f"{head}: {holders}" if holders else head
        error_class = PoolQueueFull if queue_full else PoolExhausted
        return error_class(
            message, alias=self.config.alias, waited=waited, queue_full=queue_full, priority=priority
        )


class PrioritizedPool(GuardedPool):
    """A :class:`GuardedPool` with a priority gate (:mod:`django_poolguard.engine.priority`), for
    an alias with a ``reserve``. A subclass, so pools without one run exactly GuardedPool's code.

    psycopg_pool calls ``_get_ready_connection`` and ``_add_to_pool`` under its own lock: the
    gate decides there, and takes no other lock. While more connections are idle than the largest
    reserve floor, every class is admitted and nobody waits: a checkout is psycopg_pool's own plus
    one count for its class, a return psycopg_pool's own steps (``_compat.add_to_pool``).
    """

    admission: Admission

    def __init__(self, *args: Any, config: AliasConfig, **kwargs: Any) -> None:
        super().__init__(*args, config=config, **kwargs)
        self.admission = Admission(config.reserve or {}, self.timeout)
        self._gate_queue = WaitingQueue()
        _compat.install_waiting_queue(self, self._gate_queue)
        # What the uncontended checkout reads, held here so it makes no call to get them:
        # psycopg_pool's deque of idle connections (never rebound), the count of idle connections
        # above which every class is admitted, each class's floor, and the gate's served counts.
        self._gate_idle = _compat.idle_queue(self)
        self._gate_open_above = self.admission.open_above
        self._gate_floor = self.admission.floor
        self._gate_served = self.admission.served

    # psycopg_pool's private state is read here through _compat, under its lock (tests/test_compat.py).

    def _get_ready_connection(self, timeout: float | None) -> Any:
        rank = current_rank()
        idle = len(self._gate_idle)
        # An idle connection for a class its reserve admits: psycopg_pool's own checkout. Free is
        # at least idle, so with more idle than the largest floor no count is needed.
        if idle > self._gate_open_above or (idle and _compat.free_connections(self) > self._gate_floor[rank]):
            # GuardedPool's is psycopg_pool's own; named, not super(): no proxy object per checkout.
            connection = GuardedPool._get_ready_connection(self, timeout)
            self._gate_served[rank] += 1  # served at once: Admission.observe(rank, 0.0), inline
            return connection
        return self._gate_admit(rank, timeout)

    def _gate_admit(self, rank: int, timeout: float | None) -> Any:
        """The gate proper: no idle connection, or only reserved ones for this class."""
        admission = self.admission
        queue = self._gate_queue
        free = _compat.free_connections(self)
        if admission.admits(rank, free):
            if self.max_waiting and len(queue) >= self.max_waiting and not self._gate_idle:
                admission.evict_for(rank, queue)
            connection = GuardedPool._get_ready_connection(self, timeout)
            if connection is not None:
                admission.observe(rank, 0.0)  # served at once; a queued one is timed when handed one
            return connection
        if rank == len(PRIORITY_CLASSES) - 1 and admission.floor[rank]:
            raise admission.refuse(rank, free)  # low work does not queue for reserved connections
        # Wait in line without taking a reserved idle connection; psycopg_pool then queues us.
        if timeout is not None and timeout <= 0.0:
            raise PoolTimeout()
        if self.max_waiting and len(queue) >= self.max_waiting:
            if not admission.evict_for(rank, queue):
                _compat.count_request_error(self)
                raise TooManyRequests(f"the pool {self.name!r} has already {len(queue)} requests waiting")
        return None

    def _gate_hand_over(self, conn: Any) -> bool:
        """Give a returned connection to the waiter :meth:`Admission.pick` chooses; under the
        pool's lock, with clients queued. False if none may take it (it stays idle, kept for
        the reserve)."""
        admission = self.admission
        queue = self._gate_queue
        free = _compat.free_connections(self) + 1
        while queue and (client := admission.pick(queue, free)) is not None:
            waiter = queue.waiters.get(id(client))
            queue.drop(client)
            if _compat.hand_connection(client, conn):
                if waiter is not None:
                    admission.observe(waiter.rank, monotonic() - waiter.since)
                return True
        return False

    # psycopg_pool's own, but the connection goes to the best waiter the reserve allows, not to
    # the first in line. Made by _compat (psycopg_pool's steps), so a return adds no frame; a
    # plain function, which mypy cannot match to the method it replaces.
    _add_to_pool = _compat.add_to_pool_handing(_gate_hand_over)  # type: ignore[assignment]


class LeasedPool(GuardedPool):
    """A :class:`GuardedPool` under a fleet budget's lease (``fleet_budget``): it never counts more
    connections than :attr:`lease_limit`. A subclass, so pools without a budget run exactly
    GuardedPool's code; the checkout itself is untouched (the cap acts where psycopg_pool grows,
    and on a connection's way back into the pool)."""

    def _maybe_grow_pool(self) -> None:
        # psycopg_pool calls this under its lock only when a client must wait: never on the fast path.
        limit = self.lease_limit
        if limit is not None and _compat.counted_connections(self) >= limit:
            wanted = self.lease_wanted
            if wanted is not None:
                wanted()  # sets an Event: no I/O, no other lock
            return
        super()._maybe_grow_pool()

    def _add_to_pool(self, conn: Any) -> None:
        # A connection coming back (or newly opened) while the pool counts more than its lease is
        # closed instead of kept: a busy process gives back over-lease connections as they turn idle.
        limit = self.lease_limit
        if limit is not None and _compat.close_over_limit(self, conn, limit):
            freed = self.lease_freed
            if freed is not None:
                freed()  # sets an Event: the keeper gives the slot back to the store within MIN_GAP
            return
        super()._add_to_pool(conn)


class LeasedPrioritizedPool(LeasedPool, PrioritizedPool):
    """A :class:`PrioritizedPool` under a fleet budget's lease."""


def pool_class(config: AliasConfig) -> type[GuardedPool]:
    """The pool an alias gets: with a priority ``reserve``, the one with a gate; with a
    ``fleet_budget``, the one under a lease."""
    if config.fleet_budget is not None:
        return LeasedPrioritizedPool if config.reserve else LeasedPool
    return PrioritizedPool if config.reserve else GuardedPool


@dataclass(frozen=True)
class SlotCount:
    """Where a pool's connections are. Invariant: ``size == idle + in_use + opening + returning``."""

    size: int  # connections psycopg_pool counts as its own (open, or being opened)
    idle: int
    in_use: int  # ledger entries
    live: int  # connections the pool opened that still exist and are open, wherever they are
    opening: int  # being opened, or waiting to retry opening
    returning: int  # being reset by a worker before going back
    growing_lost: bool  # psycopg_pool thinks it is growing, but no task is doing it: it never will again

    @property
    def unaccounted(self) -> int:
        """``size - idle - in_use - opening - returning``; below zero: connections it does not count."""
        return self.size - self.idle - self.in_use - self.opening - self.returning

    @property
    def missing(self) -> int:
        """Slots lost for good: unaccounted for, and no open connection left to fill them.

        A connection being handed to a waiting client is unaccounted for a moment but still exists;
        a lost one was dropped with the exception that interrupted it (or closed).
        """
        return max(0, min(self.unaccounted, self.size - self.opening - self.returning - self.live))

    @property
    def surplus(self) -> int:
        """Connections idle or checked out beyond what psycopg_pool counts (a lost one came back)."""
        return max(0, -self.unaccounted)


class _TransitTask(MaintenanceTask):
    """Runs a tracked task and marks it arrived, however its run ends (or is discarded)."""

    def __init__(self, pool: GuardedPool, task: MaintenanceTask) -> None:
        super().__init__(pool)
        self.task = task

    def run(self) -> None:
        try:
            self.task.run()
        finally:
            pool = self.pool()
            if pool is not None:
                pool._transit.discard(self.task)  # type: ignore[attr-defined]

    def _run(self, pool: Any) -> None:  # pragma: no cover  (run() is overridden)
        self.task.run()


_FATAL = re.compile(r"\b(FATAL|ERROR|PANIC):\s.*", re.DOTALL)
_SECRET = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_URL_SECRET = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")
CONNECT_ERROR_CHARS = 300


def connect_error_text(exc: BaseException) -> str:
    """What the server said about a failed connection attempt, with no password in it.

    libpq prefixes the server's reason with the address it tried ("connection to server at ... failed:
    FATAL: ..."); the reason is what an engineer needs. Anything shaped like a password is masked,
    whatever the message.
    """
    text = " ".join(str(exc).split())
    match = _FATAL.search(text)
    if match:
        text = match.group(0)
    text = _URL_SECRET.sub(r"\1********@", _SECRET.sub(r"\1********", text))
    return f"{type(exc).__name__}: {bounded(text, CONNECT_ERROR_CHARS)}"


_PLUMBING: frozenset[int] = frozenset()


def _plumbing_codes() -> frozenset[int]:
    """Django's connection-opening frames, the same under every checkout: not worth recording."""
    global _PLUMBING
    from django.db.backends.base.base import BaseDatabaseWrapper  # Django's, not ours: no circle
    from django.db.backends.postgresql.base import DatabaseWrapper as PostgresWrapper
    from django.utils.asyncio import async_unsafe

    functions: list[Any] = [async_unsafe(lambda: None)]
    # Django's wrappers, and the backend's with their subclasses: what those put on these methods
    # (cheap async checks, overrides) is plumbing too. Any of it missed would be walked and recorded
    # in every acquire stack, before the application's frames, taking places of STACK_DEPTH.
    for cls in (BaseDatabaseWrapper, PostgresWrapper, *_with_subclasses(registry.wrapper_classes)):
        for name in _compat.DJANGO_CONNECT_PATH:
            function = cls.__dict__.get(name)
            if function is not None:
                functions.append(function)
                functions.append(getattr(function, "__wrapped__", function))
    # By id: these functions live as long as their modules, so their code objects do too.
    _PLUMBING = frozenset(id(f.__code__) for f in functions if hasattr(f, "__code__"))
    return _PLUMBING


def _with_subclasses(classes: tuple[type, ...]) -> list[type]:
    found: list[type] = []
    pending = list(classes)
    while pending:
        cls = pending.pop()
        if cls not in found:
            found.append(cls)
            pending.extend(cls.__subclasses__())
    return found


def describe_holders(pool: GuardedPool, limit: int = 3) -> str:
    """``"7 held by GET /api/report (oldest 42 s, reports/views.py:88 in report), 3 by ..."``."""
    groups: dict[str, list[Any]] = defaultdict(list)
    for checkout in pool.ledger.checkouts():  # oldest first
        groups[checkout.label].append(checkout)
    ranked = sorted(groups.items(), key=lambda item: (-len(item[1]), item[1][0].started))
    parts = []
    for index, (label, checkouts) in enumerate(ranked[:limit]):
        oldest = checkouts[0]
        where = oldest.origin or "no application frame"
        verb = "held by" if index == 0 else "by"
        # Escaped: the message reaches logs and error trackers, and thread names come from anywhere.
        parts.append(
            f"{len(checkouts)} {verb} {escape_controls(label)} (oldest {oldest.held:.0f} s, {where})"
        )
    if len(ranked) > limit:
        parts.append(f"{sum(len(c) for _, c in ranked[limit:])} by {len(ranked) - limit} others")
    return ", ".join(parts)


# --- This process's pools -------------------------------------------------------------------

_pools: dict[str, GuardedPool] = {}
# Serializes pool creation so concurrent first checkouts on one alias build a single pool.
_pools_lock = threading.Lock()
# Pools and connections inherited from a parent process. Their sockets now point at /dev/null
# (see after_fork_in_child); they are kept referenced so nothing tries to tidy them up.
_inherited: list[Any] = []
_pool_created_hooks: list[Callable[[GuardedPool], None]] = []


@dataclass
class Registry:
    """What the layers above tell the engine, which imports none of them: the engine points down only.

    The backend registers its wrapper class (:func:`register_backend`); the process runtime
    (:mod:`django_poolguard.runtime`) registers what wakes and stops the watchdog.
    """

    # Set in processes that own their pools until exit (Celery workers): see keep_pools_open().
    keep_open: bool = False
    # The backend's DatabaseWrapper classes: after fork, their inherited connections are forgotten;
    # their connection-opening methods (and their subclasses') are left out of acquire stacks.
    wrapper_classes: tuple[type, ...] = ()
    # Called (from a weakref callback, inside the garbage collector) when a checkout's wrapper is
    # collected: the runtime asks for a leak scan soon. Each must take no lock and do no I/O.
    wrapper_collected: list[Callable[[], None]] = field(default_factory=list)
    # Called before the test database is dropped: the runtime stops the watchdog, so nothing
    # reopens a connection while the sessions are being closed.
    stop_background: list[Callable[[], None]] = field(default_factory=list)
    # Called with an alias whose pool was forgotten or replaced (None: every alias, after fork):
    # the backend drops the pool its wrappers keep as a plain attribute.
    pool_forgotten: list[Callable[[str | None], None]] = field(default_factory=list)


registry = Registry()


def register_backend(wrapper_class: type) -> None:
    """Tell the pool registry about the ENGINE's wrapper class."""
    global _PLUMBING
    if wrapper_class not in registry.wrapper_classes:
        registry.wrapper_classes = (*registry.wrapper_classes, wrapper_class)
    _PLUMBING = frozenset()  # recomputed at the next checkout


def wrapper_collected(ref: weakref.ref[Any]) -> None:
    """Weakref callback of a checkout's wrapper: ask for a leak scan soon. No lock, no I/O (runs in GC)."""
    try:
        for hook in registry.wrapper_collected:  # none when the app is not installed: no watchdog
            hook()
    except Exception:  # at interpreter shutdown module globals may already be gone
        pass


def stop_background() -> None:
    """Stop whatever works on the pools in the background (before the test database is dropped)."""
    for stop in list(registry.stop_background):
        stop()


def get_pool(alias: str) -> GuardedPool | None:
    return _pools.get(alias)


def _forgotten(alias: str | None) -> None:
    """Tell the layers above that ``alias``'s pool (every pool, for None) is no longer current."""
    for hook in list(registry.pool_forgotten):
        hook(alias)


def get_or_create_pool(alias: str, factory: Callable[[], GuardedPool]) -> GuardedPool:
    pool = _pools.get(alias)
    if pool is not None:
        return pool
    with _pools_lock:
        pool = _pools.get(alias)
        if pool is None:
            pool = _pools[alias] = factory()
            pool.factory = factory
            created = True
        else:
            created = False
    if created:
        for hook in list(_pool_created_hooks):
            hook(pool)
    return pool


def on_pool_created(hook: Callable[[GuardedPool], None]) -> None:
    """Call ``hook(pool)`` for every pool created from now on (the watchdog starts this way)."""
    if hook not in _pool_created_hooks:
        _pool_created_hooks.append(hook)


def forget_pool_created(hook: Callable[[GuardedPool], None]) -> None:
    """Stop calling ``hook`` for new pools (a runtime being dropped)."""
    if hook in _pool_created_hooks:
        _pool_created_hooks.remove(hook)


def discard_pool(alias: str, pool: GuardedPool | None = None) -> GuardedPool | None:
    """Forget the alias's pool (only if it is still ``pool``, when given) and return it."""
    with _pools_lock:
        current = _pools.get(alias)
        if current is None or (pool is not None and current is not pool):
            return None
        _pools.pop(alias)
    _forgotten(alias)
    return current


def replace_pool(alias: str, pool: GuardedPool) -> GuardedPool | None:
    """Put a fresh pool in place of ``pool`` (if it still serves ``alias``) and close the old one in
    the background: a wedged pool's lock may never come back, and nobody must wait for it.

    Returns the new pool, or None when ``pool`` was no longer current or could not be rebuilt (then
    the alias is simply forgotten and its next checkout builds a new pool).
    """
    replacement: GuardedPool | None = None
    with _pools_lock:
        if _pools.get(alias) is not pool:
            return None
        del _pools[alias]
        if pool.factory is not None:
            try:
                replacement = _pools[alias] = pool.factory()
                replacement.factory = pool.factory
            except Exception:
                logger.exception(
                    "Building a new pool for alias %r failed; the next checkout will try.", alias
                )
    _forgotten(alias)
    if replacement is not None:
        for hook in list(_pool_created_hooks):
            hook(replacement)
    threading.Thread(
        target=_close_replaced, args=(pool,), name=f"poolguard-close-{alias}"[:60], daemon=True
    ).start()
    return replacement


def _close_replaced(pool: GuardedPool) -> None:
    try:
        pool.close(timeout=1.0)
    except Exception:
        logger.exception("Closing the replaced pool of alias %r failed.", pool.config.alias)


def all_pools() -> dict[str, GuardedPool]:
    return dict(_pools)


def keep_pools_open(keep: bool = True) -> None:
    """Make this process own its pools until it exits: ``close_pool()`` on a guarded alias then
    returns only the calling thread's connection and keeps the pool.

    Celery's Django fixup calls ``close_pool()`` after every task in a prefork child, which turns a
    pool into one new connection per task (celery#10554); :mod:`django_poolguard.celery` calls this
    in each worker process and closes the pools itself with :func:`close_all_pools` at shutdown.
    """
    registry.keep_open = keep


def pools_kept_open() -> bool:
    return registry.keep_open


def close_all_pools(timeout: float = 5.0) -> None:
    """Close every pool of this process (process shutdown): sessions end cleanly on the server."""
    for alias in list(_pools):
        pool = discard_pool(alias)
        if pool is not None:
            try:
                pool.close(timeout=timeout)
            except Exception:
                logger.exception("Closing the pool of alias %r at shutdown failed.", alias)


def silence_inherited(connection: Any) -> None:
    """Point an inherited connection's socket at /dev/null in this process only.

    Closing it would send PostgreSQL a Terminate on the parent's session; letting it be
    garbage-collected would do the same. After dup2 the parent's socket is untouched and
    whatever libpq later writes here goes nowhere.
    """
    try:
        fd = connection.pgconn.socket
    except Exception:
        return
    if fd is None or fd < 0:
        return
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
    _inherited.append(connection)


def after_fork_in_child() -> None:
    """In a forked child: forget the parent's pools without touching the parent's sessions."""
    inherited = list(_pools.values())
    _pools.clear()
    _forgotten(None)
    for pool in inherited:
        _inherited.append(pool)
        for connection in _compat.idle_connections(pool):
            silence_inherited(connection)
        for checkout in pool.ledger.checkouts():
            silence_inherited(checkout.connection)
    if inherited:
        _forget_wrapper_connections(inherited)


def _forget_wrapper_connections(inherited: list[GuardedPool]) -> None:
    """The forking thread's Django wrappers may hold a parent connection: drop it."""
    from django.db import connections  # after fork only; django.db is below the engine

    for wrapper in connections.all(initialized_only=True):
        connection = getattr(wrapper, "connection", None)
        if connection is not None and _compat.connection_pool(connection) in inherited:
            silence_inherited(connection)
            if isinstance(wrapper, registry.wrapper_classes):  # only ours hand out GuardedPool connections
                wrapper.forget_connection()  # type: ignore[attr-defined]  # the backend's method


__all__ = [
    "GuardedPool",
    "LeasedPool",
    "LeasedPrioritizedPool",
    "PoolClosed",
    "PrioritizedPool",
    "Registry",
    "after_fork_in_child",
    "all_pools",
    "close_all_pools",
    "describe_holders",
    "discard_pool",
    "forget_pool_created",
    "get_or_create_pool",
    "get_pool",
    "keep_pools_open",
    "on_pool_created",
    "pool_class",
    "pools_kept_open",
    "register_backend",
    "registry",
    "replace_pool",
    "stop_background",
    "wrapper_collected",
]
