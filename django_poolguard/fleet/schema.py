"""The published data contract: what a process publishes for fleet views, and how readers read it.

The shapes (:class:`ProcessSnapshot`, :class:`AliasSnapshot`, :class:`CheckoutSnapshot`,
:class:`HistoryPoint`) are defined here and nowhere else: the writers
(:mod:`~django_poolguard.fleet.snapshots`, :mod:`~django_poolguard.fleet.publish`) build them
and every reader (``poolstats``, the admin dashboard, ``collect()``) gets them from
:func:`read_entry`.

Every published entry carries ``"schema": SCHEMA_VERSION``. Entries without it were written by
the release before versioning (version 1, the same keys) and are read as the current shape.
The version is raised only for a change that would mislead an older reader (a key removed or
renamed, a meaning or unit changed); adding a key does not raise it, since readers drop keys
they do not know. So an entry of a newer version is skipped and reported, never guessed at:
during a rolling deploy, the older release's views list the newer processes as unreadable
until they are upgraded too, and the newer release's views show everyone.

What another process published is input, not data this process made: a row edited by hand,
a cache shared with something else, or a newer release writing a changed shape during a
rolling deploy. So :func:`read_entry` validates each entry: one bad entry is skipped and
reported while the rest of the fleet is still shown. The output has exactly the keys this
release writes (unknown ones are dropped), numbers are finite, non-negative and bounded, and
names are short printable strings. History points are checked one by one: a bad point is
dropped, not the process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NamedTuple, NotRequired, TypedDict

from django_poolguard.engine.profile import QUERY_BOUNDS, WAIT_BOUNDS, TopRow

#: The version of the shapes below that this release writes, and the newest it reads.
SCHEMA_VERSION = 2
#: Entries without a ``"schema"`` key: the release before versioning wrote them.
UNVERSIONED = 1

HEALTHY, WARNING, CRITICAL = "healthy", "warning", "critical"
STATUSES = (HEALTHY, WARNING, CRITICAL)
# JSON readers (the dashboard's script, jq) hold numbers as doubles: beyond 2**53 they lose digits.
MAX_NUMBER = 2**53
MAX_PID = 2**32
MAX_NAME = 255  # host, role, alias, workload: a hostname is at most 253 characters
MAX_TEXT = 1000  # a checkout's context (a request line can be long): cut, not refused
MAX_STACK_LINES = 100
MAX_CHECKOUTS = 1000  # per alias; a pool this large is unheard of, the rest are not shown
MAX_ALIASES = 1000
MAX_HISTORY_POINTS = 181  # publish.HISTORY_POINTS + 1: the newest are kept
MAX_PUBLISH_INTERVAL = 24 * 3600.0  # s; also the bound the database store applies to expire rows
MAX_ENTRY_CHARS = 16 * 1024 * 1024  # a published row's JSON text; larger ones are not parsed
EXCERPT_CHARS = 40

POOL_COUNTS = ("min", "max", "size", "in_use", "idle", "waiting")
POOL_TOTALS = (
    "acquired_total",
    "timeouts_total",
    "rejected_total",
    "shed_total",
    "leaks_active",
    "leaks_total",
    "hoards_total",
    "reclaimed_total",
    "released_total",
    "connections_opened_total",
    "connection_errors_total",
)
PERCENTILES = ("p50", "p95", "p99")


class Percentiles(TypedDict):
    p50: float
    p95: float
    p99: float


class PoolState(TypedDict):
    """A pool's sizes, utilization and status: what health checks and snapshots share."""

    min: int
    max: int
    size: int
    in_use: int
    idle: int
    waiting: int
    utilization: float
    status: str


class CheckoutSnapshot(TypedDict):
    """One connection held right now: who holds it, for how long, and where it was taken."""

    thread: str
    alive: bool
    held_s: float
    wait_ms: float
    context: str
    in_transaction: bool
    held_reason: str  # why a transaction-mode holder kept it (see backends/postgresql/release.py), or ""
    stack: list[str]


#: A :class:`HistoryPoint` as published: a list in ``HISTORY_FIELDS`` order, compact because an
#: entry carries up to 181 of them per alias. Only :func:`encode_point` and the decoders below
#: know the order.
EncodedPoint = list[float]


class PrioritySnapshot(TypedDict):
    """One priority class of one alias of one process (aliases with priorities only)."""

    acquired_total: int  # checkouts served
    refused_total: int  # refused at once by the reserve, or to make room for a better class
    shed_total: int  # answered 503 by the middleware
    acquire_ms: Percentiles


class LeaseSnapshot(TypedDict):
    """An alias's share of its fleet budget (``OPTIONS["poolguard"]["fleet_budget"]``), as one process sees it."""

    budget: int  # connections for the alias's workload across every process ("auto" resolved)
    lease: int  # connections this process may hold now (its pool's max_size follows it)
    share: int  # its fair share: the budget over the live processes of the workload
    members: int  # live processes of the workload in the lease store, this one included
    fleet_held: int  # leases held across the fleet at the last heartbeat, this one's included
    store: str  # where leases live: "database" or "cache"
    fallback: bool  # the store is unreachable: the pool runs on a static share
    capped: str | None  # why the pool runs below max_size, e.g. "capped at 4 by fleet budget 120 over 30 processes"


class AliasSnapshot(PoolState):
    """One alias of one process: the ``processes[].aliases`` values of ``poolstats --json``."""

    workload: str
    acquire_ms: Percentiles
    held_ms: Percentiles
    acquired_total: int
    timeouts_total: int
    rejected_total: int
    shed_total: int
    leaks_active: int
    leaks_total: int
    hoards_total: int
    reclaimed_total: int
    reclaimed_by_reason: dict[str, int]
    release: str  # OPTIONS["poolguard"]["release"]: "request" or "transaction"
    released_total: int  # checkouts given back between transactions (transaction mode)
    pinned_by_reason: dict[str, int]  # transaction mode: checkouts pinned by session state
    connections_opened_total: int
    connection_errors_total: int
    leak_threshold: float
    checkouts: NotRequired[list[CheckoutSnapshot]]
    history: NotRequired[list[EncodedPoint]]
    #: By class (``critical``, ``normal``, ``low``), when the alias has a reserve or sheds by class.
    priorities: NotRequired[dict[str, PrioritySnapshot]]
    #: The pool-time profile: per label, ranked by pool-seconds (``engine.profile.TopRow``); an
    #: optional key older readers drop, so no new schema version.
    top: NotRequired[list[TopRow]]
    #: The alias's fleet budget lease, when it has a ``fleet_budget`` (an optional key: no new version).
    lease: NotRequired[LeaseSnapshot]


class ProcessSnapshot(TypedDict):
    """One process's published entry: the ``processes[]`` entries of ``poolstats --json``.

    ``age_s`` and ``live`` are added by readers; ``published_at`` by the cache store.
    """

    schema: int
    host: str
    pid: int
    role: str
    updated_at: NotRequired[str]
    publish_interval: NotRequired[float]
    published_at: NotRequired[float]
    age_s: NotRequired[float]
    live: NotRequired[bool]
    aliases: dict[str, AliasSnapshot]


class HistoryPoint(NamedTuple):
    """One step of an alias's recent history (the sparkline)."""

    t: float  # Unix seconds
    in_use: int
    idle: int
    waiting: int
    max: int
    acquire_p95_ms: float


HISTORY_FIELDS: tuple[str, ...] = HistoryPoint._fields


def encode_point(point: HistoryPoint) -> EncodedPoint:
    """``point`` as published: ``[t, in_use, idle, waiting, max, acquire_p95_ms]``."""
    return list(point)


def decode_point(value: Any) -> HistoryPoint | None:
    """A published point as a :class:`HistoryPoint`, or ``None`` when it is not a valid one."""
    point = _checked_point(value)
    return None if point is None else HistoryPoint._make(point)


def decode_history(value: Any) -> list[HistoryPoint]:
    """The valid points of a published ``history`` (the newest ``MAX_HISTORY_POINTS``)."""
    return [HistoryPoint._make(point) for point in _checked_history(value)]


def _checked_point(value: Any) -> EncodedPoint | None:
    """``value`` as a fresh encoded point when it is a valid one, else ``None``.

    One flat condition, and no object built: the admin reads up to 181 points per alias and
    process, every refresh, and keeps them encoded.
    """
    if type(value) not in (list, tuple) or len(value) != len(HISTORY_FIELDS):
        return None
    t, in_use, idle, waiting, size, p95 = value
    if (
        type(in_use) is int
        and type(idle) is int
        and type(waiting) is int
        and type(size) is int
        and (type(t) is float or type(t) is int)
        and (type(p95) is float or type(p95) is int)
        and 0 <= in_use <= MAX_NUMBER
        and 0 <= idle <= MAX_NUMBER
        and 0 <= waiting <= MAX_NUMBER
        and 0 <= size <= MAX_NUMBER
        and 0 <= t <= MAX_NUMBER  # NaN fails, infinity too
        and 0 <= p95 <= MAX_NUMBER
    ):
        return [float(t), in_use, idle, waiting, size, float(p95)]
    return None


def _checked_history(value: Any) -> list[EncodedPoint]:
    if not isinstance(value, (list, tuple)):
        return []  # history only draws the sparkline: the process's numbers still count
    points = (_checked_point(p) for p in list(value)[-MAX_HISTORY_POINTS:])
    return [p for p in points if p is not None]


@dataclass(frozen=True)
class Unreadable:
    """A published entry that was skipped: whose it is (when that much can be read) and why.

    ``reason`` quotes at most a short, escaped excerpt of the offending value, never the entry.
    """

    host: str | None
    pid: int | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host, "pid": self.pid, "reason": self.reason}

    def describe(self) -> str:
        """``host=web-1, pid=4242: aliases.default.in_use: expected ..., got "abc"``"""
        host = "?" if self.host is None else self.host
        pid = "?" if self.pid is None else self.pid
        return f"host={host}, pid={pid}: {self.reason}"


def unreadable_line(entries: list[dict[str, Any]], *, shown: int = 3) -> str:
    """``1 snapshot unreadable: host=web-1, pid=4242: <reason>`` for ``collect()["unreadable"]``:
    one line (the ``--check`` line, a log line), naming at most ``shown`` of them."""
    described = [Unreadable(**entry).describe() for entry in entries[:shown]]
    if len(entries) > shown:
        described.append(f"and {len(entries) - shown} more")
    return f"{unreadable_count(entries)}: " + "; ".join(described)


def unreadable_count(entries: list[dict[str, Any]]) -> str:
    return f"{len(entries)} snapshot{'' if len(entries) == 1 else 's'} unreadable"


#: Stands for an absent key, so the reason says "missing" rather than "null".
MISSING: Any = type("Missing", (), {"__repr__": lambda self: "MISSING"})()


class _Skipped(Exception):
    """Why an entry is skipped (the message is the reported reason)."""


class _Invalid(_Skipped):
    def __init__(self, path: str, expected: str, value: Any) -> None:
        super().__init__(f"{path}: expected {expected}, got {excerpt(value)}")


def excerpt(value: Any) -> str:
    """A short, escaped description of an untrusted value, safe in a terminal, log or page.

    Containers are summarised, not printed (they can be huge or nested without end); strings
    are JSON-escaped (no control character survives) and cut; huge integers are not printed
    (Python refuses to print more than 4300 digits, and nobody should read them).
    """
    if value is MISSING:
        return "nothing (the key is missing)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if abs(value) < 10**30 else f"an integer of {value.bit_length()} bits"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        cut = value[:EXCERPT_CHARS]
        return json.dumps(cut) + ("..." if len(value) > EXCERPT_CHARS else "")
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} item{'' if len(value) == 1 else 's'}"
    if isinstance(value, dict):
        return f"an object with {len(value)} key{'' if len(value) == 1 else 's'}"
    return f"a {type(value).__name__}"


# --- field readers: each returns the clean value or raises _Invalid naming the path ------------


def bounded_number(value: Any, low: float, high: float) -> float | None:
    """``value`` as a float when it is a finite number within ``[low, high]``, else ``None``."""
    try:
        return _number(value, "", low=low, high=high)
    except _Invalid:
        return None


def published_timing(raw: Any, now: float) -> tuple[float | None, float | None]:
    """An entry's ``publish_interval`` and ``published_at`` before it is read, for a store to
    tell whether its process is live; ``None`` for a value that is not valid (the store then
    falls back to its own, and lists the entry so that the reader reports it)."""
    fields = raw if isinstance(raw, dict) else {}
    interval = bounded_number(fields.get("publish_interval"), 0.001, MAX_PUBLISH_INTERVAL)
    published_at = bounded_number(fields.get("published_at"), 0.0, now + 3600.0)
    return interval, published_at


def _bound(high: float) -> str:
    return "2**53" if high == MAX_NUMBER else f"{high:g}"


def _count(value: Any, path: str, *, high: int = MAX_NUMBER) -> int:
    # type() rather than isinstance(): a bool is an int to isinstance, never a count here.
    if type(value) is not int or not 0 <= value <= high:
        raise _Invalid(path, f"a whole number from 0 to {_bound(high)}", value)
    return value


def _number(value: Any, path: str, *, low: float = 0.0, high: float = MAX_NUMBER) -> float:
    # NaN fails every comparison and infinity the upper bound, so the bounds check finiteness
    # too; and comparing a huge int with a float is exact in Python, where float() overflows.
    if type(value) not in (int, float) or not low <= value <= high:
        raise _Invalid(path, f"a number from {low:g} to {_bound(high)}", value)
    return float(value)


def _name(value: Any, path: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME or not value.isprintable():
        raise _Invalid(path, f"a printable name of 1 to {MAX_NAME} characters", value)
    return value


def _text(value: Any, path: str, limit: int = MAX_TEXT) -> str:
    """Free text (a checkout's context, a stack line): cut to ``limit``, never refused for length."""
    if not isinstance(value, str):
        raise _Invalid(path, "a string", value)
    return value if len(value) <= limit else value[: limit - 3] + "..."


def _flag(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(path, "true or false", value)
    return value


def _object(value: Any, path: str) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise _Invalid(path, "an object", value)
    return value


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise _Invalid(path, "a list", value)
    return list(value)


def _percentiles(value: Any, path: str) -> Percentiles:
    data = _object(value, path)
    p50, p95, p99 = (_number(data.get(p, 0.0), f"{path}.{p}") for p in PERCENTILES)
    return {"p50": p50, "p95": p95, "p99": p99}


def _checkout(value: Any, path: str) -> CheckoutSnapshot:
    data = _object(value, path)
    stack = _list(data.get("stack", []), f"{path}.stack")[:MAX_STACK_LINES]
    # Paths are only formatted for a bad line: a fleet view reads thousands of good ones.
    for i, line in enumerate(stack):
        if type(line) is not str:
            raise _Invalid(f"{path}.stack[{i}]", "a string", line)
    return {
        "thread": _text(data.get("thread", MISSING), f"{path}.thread", MAX_NAME),
        "alive": _flag(data.get("alive", True), f"{path}.alive"),
        "held_s": _number(data.get("held_s", MISSING), f"{path}.held_s"),
        "wait_ms": _number(data.get("wait_ms", 0.0), f"{path}.wait_ms"),
        "context": _text(data.get("context", ""), f"{path}.context"),
        "in_transaction": _flag(data.get("in_transaction", False), f"{path}.in_transaction"),
        "held_reason": _text(data.get("held_reason", ""), f"{path}.held_reason", MAX_NAME),
        "stack": [line if len(line) <= MAX_TEXT else line[: MAX_TEXT - 3] + "..." for line in stack],
    }


def _pool(value: Any, path: str, history: bool) -> AliasSnapshot:
    data = _object(value, path)
    counts = {key: _count(data.get(key, MISSING), f"{path}.{key}") for key in POOL_COUNTS}
    totals = {key: _count(data.get(key, 0), f"{path}.{key}") for key in POOL_TOTALS}
    status = data.get("status", MISSING)
    if status not in STATUSES:
        raise _Invalid(f"{path}.status", " or ".join(STATUSES), status)
    reasons = _object(data.get("reclaimed_by_reason", {}), f"{path}.reclaimed_by_reason")
    if len(reasons) > MAX_ALIASES:
        raise _Invalid(f"{path}.reclaimed_by_reason", f"at most {MAX_ALIASES} reasons", reasons)
    pins = _object(data.get("pinned_by_reason", {}), f"{path}.pinned_by_reason")
    if len(pins) > MAX_ALIASES:
        raise _Invalid(f"{path}.pinned_by_reason", f"at most {MAX_ALIASES} reasons", pins)
    workload = data.get("workload")
    pool: AliasSnapshot = {
        "workload": "" if workload is None else _name(workload, f"{path}.workload"),
        "min": counts["min"],
        "max": counts["max"],
        "size": counts["size"],
        "in_use": counts["in_use"],
        "idle": counts["idle"],
        "waiting": counts["waiting"],
        # Derived, so recomputed rather than trusted.
        "utilization": round(counts["in_use"] / counts["max"], 4) if counts["max"] else 0.0,
        "status": status,
        "acquire_ms": _percentiles(data.get("acquire_ms", {}), f"{path}.acquire_ms"),
        "held_ms": _percentiles(data.get("held_ms", {}), f"{path}.held_ms"),
        "acquired_total": totals["acquired_total"],
        "timeouts_total": totals["timeouts_total"],
        "rejected_total": totals["rejected_total"],
        "shed_total": totals["shed_total"],
        "leaks_active": totals["leaks_active"],
        "leaks_total": totals["leaks_total"],
        "hoards_total": totals["hoards_total"],
        "reclaimed_total": totals["reclaimed_total"],
        "reclaimed_by_reason": {
            _name(reason, f"{path}.reclaimed_by_reason"): _count(n, f"{path}.reclaimed_by_reason.{reason}")
            for reason, n in reasons.items()
        },
        "release": _name(data.get("release", "request"), f"{path}.release"),
        "released_total": totals["released_total"],
        "pinned_by_reason": {
            _name(reason, f"{path}.pinned_by_reason"): _count(n, f"{path}.pinned_by_reason.{reason}")
            for reason, n in pins.items()
        },
        "connections_opened_total": totals["connections_opened_total"],
        "connection_errors_total": totals["connection_errors_total"],
        "leak_threshold": _number(data.get("leak_threshold", 0.0), f"{path}.leak_threshold"),
    }
    if "checkouts" in data:
        checkouts = _list(data["checkouts"], f"{path}.checkouts")[:MAX_CHECKOUTS]
        pool["checkouts"] = [_checkout(c, f"{path}.checkouts[{i}]") for i, c in enumerate(checkouts)]
    if history and "history" in data:
        pool["history"] = _checked_history(data["history"])
    if "priorities" in data:
        pool["priorities"] = _priorities(data["priorities"], f"{path}.priorities")
    if "top" in data:
        rows = _list(data["top"], f"{path}.top")
        if len(rows) > MAX_TOP_ROWS:
            raise _Invalid(f"{path}.top", f"at most {MAX_TOP_ROWS} rows", rows)
        pool["top"] = [_top_row(row, f"{path}.top[{i}]") for i, row in enumerate(rows)]
    if "lease" in data:
        pool["lease"] = _lease(data["lease"], f"{path}.lease")
    return pool


LEASE_COUNTS = ("budget", "lease", "share", "members", "fleet_held")


def _lease(value: Any, path: str) -> LeaseSnapshot:
    data = _object(value, path)
    counts = {key: _count(data.get(key, MISSING), f"{path}.{key}") for key in LEASE_COUNTS}
    capped = data.get("capped")
    return {
        "budget": counts["budget"],
        "lease": counts["lease"],
        "share": counts["share"],
        "members": counts["members"],
        "fleet_held": counts["fleet_held"],
        "store": _name(data.get("store", MISSING), f"{path}.store"),
        "fallback": _flag(data.get("fallback", False), f"{path}.fallback"),
        "capped": None if capped is None else _text(capped, f"{path}.capped"),
    }


MAX_PRIORITIES = 16  # three classes today; room for more without reading an unbounded dict


def _priorities(value: Any, path: str) -> dict[str, PrioritySnapshot]:
    classes = _object(value, path)
    if len(classes) > MAX_PRIORITIES:
        raise _Invalid(path, f"at most {MAX_PRIORITIES} classes", classes)
    out: dict[str, PrioritySnapshot] = {}
    for name, entry in classes.items():
        where = f"{path}.{name}"
        data = _object(entry, where)
        out[_name(name, path)] = {
            "acquired_total": _count(data.get("acquired_total", 0), f"{where}.acquired_total"),
            "refused_total": _count(data.get("refused_total", 0), f"{where}.refused_total"),
            "shed_total": _count(data.get("shed_total", 0), f"{where}.shed_total"),
            "acquire_ms": _percentiles(data.get("acquire_ms", {}), f"{where}.acquire_ms"),
        }
    return out


# --- The pool-time profile's rows (aliases.<alias>.top[]) -------------------------------------

MAX_TOP_ROWS = 1001  # PROFILE_TOP labels plus "other"; a bigger PROFILE_TOP is cut here
TOP_COUNTS = ("checkouts", "queries", "queries_max", "retries", "n1_checkouts", "n1_queries", "n1_count", "idle_samples")  # fmt: skip
TOP_SECONDS = ("held_s", "db_s", "tx_s")
TOP_PLACES = ("origin", "n1_shape", "n1_site", "idle_site")


def _histogram(value: Any, path: str, buckets: int) -> list[int]:
    counts = _list(value, path)
    if len(counts) != buckets:
        raise _Invalid(path, f"a list of {buckets} counts", counts)
    return [_count(n, f"{path}[{i}]") for i, n in enumerate(counts)]


def _top_row(value: Any, path: str) -> TopRow:
    data = _object(value, path)
    optional = {}
    for key in TOP_PLACES:
        place = data.get(key)
        optional[key] = None if place is None else _text(place, f"{path}.{key}")
    counts = {key: _count(data.get(key, 0), f"{path}.{key}") for key in TOP_COUNTS}
    seconds = {key: _number(data.get(key, 0.0), f"{path}.{key}") for key in TOP_SECONDS}
    return {
        "label": _text(data.get("label", MISSING), f"{path}.label", MAX_NAME),
        "checkouts": counts["checkouts"],
        "held_s": seconds["held_s"],
        "db_s": seconds["db_s"],
        "tx_s": seconds["tx_s"],
        "queries": counts["queries"],
        "queries_max": counts["queries_max"],
        "query_hist": _histogram(
            data.get("query_hist", MISSING), f"{path}.query_hist", len(QUERY_BOUNDS) + 1
        ),
        "wait_hist": _histogram(data.get("wait_hist", MISSING), f"{path}.wait_hist", len(WAIT_BOUNDS) + 1),
        "retries": counts["retries"],
        "origin": optional["origin"],
        "n1_checkouts": counts["n1_checkouts"],
        "n1_queries": counts["n1_queries"],
        "n1_count": counts["n1_count"],
        "n1_shape": optional["n1_shape"],
        "n1_site": optional["n1_site"],
        "idle_site": optional["idle_site"],
        "idle_samples": counts["idle_samples"],
    }


def _version(data: dict[Any, Any]) -> int:
    version = data.get("schema", UNVERSIONED)
    if type(version) is not int or not UNVERSIONED <= version <= MAX_NUMBER:
        raise _Invalid("schema", f"a whole number from {UNVERSIONED} to 2**53", version)
    if version > SCHEMA_VERSION:
        # Its keys may validate and still mean something else: not shown rather than misread.
        raise _Skipped(
            f"schema {version} is newer than this release reads ({SCHEMA_VERSION}): "
            "upgrade poolguard where this view runs to show it"
        )
    return version


def _process(data: dict[Any, Any], history: bool) -> ProcessSnapshot:
    # Checked first: a newer entry is reported as newer, not as whichever key it changed.
    _version(data)
    # Version 1 has exactly the keys of version 2, so it is read as is, into the current shape.
    aliases = _object(data.get("aliases", MISSING), "aliases")
    if len(aliases) > MAX_ALIASES:
        raise _Invalid("aliases", f"at most {MAX_ALIASES} aliases", aliases)
    entry: ProcessSnapshot = {
        "schema": SCHEMA_VERSION,
        "host": _name(data.get("host", MISSING), "host"),
        "pid": _count(data.get("pid", MISSING), "pid", high=MAX_PID),
        "role": _name(data.get("role", MISSING), "role"),
        "aliases": {},
    }
    for alias, pool in aliases.items():
        name = _name(alias, "aliases (a key)")
        entry["aliases"][name] = _pool(pool, f"aliases.{name}", history)
    if "updated_at" in data:
        entry["updated_at"] = _text(data["updated_at"], "updated_at", 64)
    if "publish_interval" in data:
        entry["publish_interval"] = _number(
            data["publish_interval"], "publish_interval", low=0.001, high=MAX_PUBLISH_INTERVAL
        )
    if "published_at" in data:
        entry["published_at"] = _number(data["published_at"], "published_at")
    return entry


def read_entry(
    raw: Any, *, host: Any = None, pid: Any = None, history: bool = True
) -> ProcessSnapshot | Unreadable:
    """``raw`` (a published entry as stored) as a :class:`ProcessSnapshot` of the current
    version, or why it is unreadable (a newer version among the reasons).

    ``host`` and ``pid`` are what the store knows of the entry apart from its content (the
    row's columns, the cache key), to name an entry whose own ``host``/``pid`` are unreadable.
    Never raises.
    """
    try:
        if not isinstance(raw, dict):
            raise _Invalid("the entry", "an object", raw)
        return _process(raw, history)
    except _Skipped as exc:
        reason = str(exc)
    except Exception as exc:  # a validator bug must cost one entry, never the fleet view
        reason = f"{type(exc).__name__} while reading it"
    own = raw if isinstance(raw, dict) else {}
    return Unreadable(
        host=_identity_host(own.get("host"), host), pid=_identity_pid(own.get("pid"), pid), reason=reason
    )


def _identity_host(*candidates: Any) -> str | None:
    for value in candidates:
        try:
            return _name(value, "host")
        except _Invalid:
            continue
    for value in candidates:
        if value is not None:
            return excerpt(value)  # escaped, so a hostile "host" cannot draw on a terminal
    return None


def _identity_pid(*candidates: Any) -> int | None:
    for value in candidates:
        try:
            return _count(value, "pid", high=MAX_PID)
        except _Invalid:
            continue
    return None


@dataclass(frozen=True)
class RawEntry:
    """A published entry as a store found it, before it is trusted.

    ``host`` and ``pid`` are what the store knows apart from the content (the row's columns,
    the cache key); ``error`` is set when the content could not even be parsed.
    """

    data: Any
    age_s: float
    host: Any = None
    pid: Any = None
    error: str | None = None


def read_entries(
    raws: list[RawEntry], *, history: bool = True
) -> tuple[list[ProcessSnapshot], list[Unreadable]]:
    """:func:`read_entry` over what a store found: the readable entries (with ``age_s``) and the rest."""
    entries: list[ProcessSnapshot] = []
    unreadable: list[Unreadable] = []
    for raw in raws:
        if raw.error is not None:
            unreadable.append(
                Unreadable(host=_identity_host(raw.host), pid=_identity_pid(raw.pid), reason=raw.error)
            )
            continue
        result = read_entry(raw.data, host=raw.host, pid=raw.pid, history=history)
        if isinstance(result, Unreadable):
            unreadable.append(result)
        else:
            result["age_s"] = raw.age_s
            entries.append(result)
    return entries, unreadable
