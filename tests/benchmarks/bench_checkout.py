"""Per-checkout cost: poolguard vs Django's native pool vs no pool, side by side in one run.

One operation = what a Django request does with the database at minimum: check a connection
out (``cursor()``), run ``SELECT 1``, give it back (``close()``). Engines are measured in
short alternating slices so drift on the machine hits them alike (see ``Interleaved``).

    python tests/benchmarks/bench_checkout.py [--slice 0.25] [--rounds 40] [--threads 1 8] [--skip-nopool]
    python tests/benchmarks/bench_checkout.py --only poolguard --rounds 150   # fewer engines, more cycles
    python tests/benchmarks/bench_checkout.py --instructions   # CPU instructions per checkout (valgrind)
    python tests/benchmarks/bench_checkout.py --opcodes        # Python bytecodes per checkout (exact)
    python tests/benchmarks/bench_checkout.py --in-context     # ns of the stack capture and the fold, in place
    python tests/benchmarks/bench_checkout.py --priorities     # adds an alias with a priority reserve
    python tests/benchmarks/bench_checkout.py --fleet-budget   # adds an alias under a fleet budget's lease

"poolguard" runs with the pool-time profile (``POOLGUARD["PROFILE"]``, off unless turned on) on,
"profile off" without it; "poolguard, priorities" (``--priorities``) is an alias with a reserve and
the profile off, as priorities are turned on alone.

Wall-clock ratios are paired (each slice over native's in the same cycle, then the median, with
the middle half of the ratios in brackets); "native, again", a second alias of Django's pool,
shows the spread the machine alone makes. Wall-clock figures move with whatever else the machine
runs; the instruction counts do not
(``valgrind --tool=callgrind`` counts the instructions the client executes, the slope between
500 and 3,000 checkouts, with the watchdog parked so only per-checkout work is counted).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import django
from django.conf import settings

from django_poolguard.testing import database_settings

POOL = {"min_size": 8, "max_size": 8, "timeout": 10}
# --priorities: the reserve's 3 connections come on top, so 8 threads never dip into it (the
# uncontended path); min_size keeps the same 8 sessions open as the other pools.
PRIORITY_POOL = {**POOL, "max_size": 11}
PRIORITY_GUARD = {"reserve": {"critical": 2, "normal": 1}}
# --fleet-budget: a budget far above max_size, so the lease is the whole pool (8) and the row measures
# the checkout of a LeasedPool; leases live in a local cache here (one process: no store to share).
BUDGET_GUARD = {"fleet_budget": 100, "lease_store": "cache"}


def configure(capture_stacks: bool, timeouts_via: str | None = None) -> None:
    connection = database_settings("postgres")
    # With --timeouts-via, poolguard's alias gets a statement_timeout delivered that way: the
    # checkout cost must not depend on it (a SET runs once per physical connection, if at all).
    guard = {"statement_timeout": 30, "timeouts_via": timeouts_via} if timeouts_via else {}
    settings.configure(
        INSTALLED_APPS=["django_poolguard"],
        USE_TZ=True,
        POOLGUARD={"CAPTURE_STACKS": capture_stacks, "PUBLISH": None, "WORKLOADS": {}},
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
        DATABASES={
            "default": {"ENGINE": "django.db.backends.postgresql", **connection},
            "native": {"ENGINE": "django.db.backends.postgresql", **connection, "OPTIONS": {"pool": POOL}},
            "poolguard": {
                "ENGINE": "django_poolguard.backends.postgresql",
                **connection,
                "OPTIONS": {"pool": POOL, "poolguard": guard},
            },
            "native_again": {
                "ENGINE": "django.db.backends.postgresql",
                **connection,
                "OPTIONS": {"pool": POOL},
            },
            "nopool": {"ENGINE": "django.db.backends.postgresql", **connection},
            "priorities": {
                "ENGINE": "django_poolguard.backends.postgresql",
                **connection,
                "OPTIONS": {"pool": PRIORITY_POOL, "poolguard": {**guard, **PRIORITY_GUARD}},
            },
            "budgeted": {
                "ENGINE": "django_poolguard.backends.postgresql",
                **connection,
                "OPTIONS": {"pool": POOL, "poolguard": {**guard, **BUDGET_GUARD}},
            },
        },
    )
    django.setup()


def one_checkout(alias: str) -> None:
    from django.db import connections

    connection = connections[alias]
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    connection.close()


class Interleaved:
    """Wall-clock checkouts per second of several engines, measured in short alternating slices.

    All ``threads`` threads run one engine for ``slice_s`` seconds, meet at a barrier, then run
    the next one: each engine's slice sits a fraction of a second away from native's, so a slow
    moment of the machine (a shared 2-core VM drifts by 10-15 % from one second to the next)
    hits both alike. The order of the engines turns every cycle, so none always follows another.
    """

    def __init__(self, threads: int, slice_s: float) -> None:
        self.threads = threads
        self.slice_s = slice_s
        self._alias = ""
        self._stop = 0.0
        self._done = False
        self._counts = [0] * threads
        # A timeout: a worker that died (the database went away) breaks the run instead of hanging it.
        self._start = threading.Barrier(threads + 1, timeout=120)
        self._end = threading.Barrier(threads + 1, timeout=120)
        self._pool = [threading.Thread(target=self._worker, args=(i,), daemon=True) for i in range(threads)]
        for thread in self._pool:
            thread.start()

    def _worker(self, index: int) -> None:
        while True:
            self._start.wait()
            if self._done:
                return
            alias, stop, n = self._alias, self._stop, 0
            while time.monotonic() < stop:
                one_checkout(alias)
                n += 1
            self._counts[index] = n
            self._end.wait()

    def slice(self, alias: str) -> tuple[float, float]:
        """One slice of ``alias``: checkouts per second by all threads together, and this
        process's CPU time per checkout in microseconds (every thread's, the watchdog's too)."""
        self._alias = alias
        cpu = time.process_time()
        started = time.monotonic()
        self._stop = started + self.slice_s
        self._start.wait()
        self._end.wait()
        elapsed = time.monotonic() - started
        checkouts = max(1, sum(self._counts))
        return checkouts / elapsed, (time.process_time() - cpu) / checkouts * 1e6

    def close(self) -> None:
        self._done = True
        self._start.wait()
        for thread in self._pool:
            thread.join()


def engine_rows(
    priorities: bool, budget: bool, profile_off: str = "poolguard, profile off"
) -> dict[str, tuple[str, bool, bool]]:
    """Row name -> (alias, poolguard's CAPTURE_STACKS, its PROFILE) while that row is measured.
    Priorities and the fleet budget run with the profile off, as they are turned on alone."""
    rows = {
        "native": ("native", True, True),
        "poolguard": ("poolguard", True, True),
        profile_off: ("poolguard", True, False),
        "poolguard, no stacks": ("poolguard", False, True),
        # What the guard costs with neither of its per-checkout recordings.
        "no stacks, profile off": ("poolguard", False, False),
    }
    if priorities:
        rows["poolguard, priorities"] = ("priorities", True, False)
    if budget:
        rows["poolguard, fleet budget"] = ("budgeted", True, False)
    return rows


def count_instructions(
    alias: str, capture: bool, checkouts: int, timeouts_via: str | None = None, profile: bool = True
) -> int:
    import re
    import subprocess

    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        os.path.abspath(__file__),
        "--run-checkouts",
        str(checkouts),
        alias,
        "on" if capture else "off",
        timeouts_via or "",
        "on" if profile else "off",
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stderr
    return int(re.search(r"Collected : (\d+)", output).group(1))  # type: ignore[union-attr]


def instructions(timeouts_via: str | None = None, priorities: bool = False, budget: bool = False) -> None:
    rows = engine_rows(priorities, budget)
    print("CPU instructions per checkout (acquire + SELECT 1 + release), client process, callgrind")
    print(f"Python {sys.version.split()[0]}, Django {django.__version__}")
    if timeouts_via:
        print(f"poolguard's alias: statement_timeout 30 s, timeouts_via={timeouts_via!r}")
    print()
    print("| engine | instructions per checkout | / native |")
    print("|---|---|---|")
    counts = {}
    for name, (alias, capture, profile) in rows.items():
        few, many = (count_instructions(alias, capture, n, timeouts_via, profile) for n in (500, 3000))
        counts[name] = (many - few) / 2500
        print(f"| {name} | {counts[name]:,.0f} | {counts[name] / counts['native']:.3f} |", flush=True)


def opcodes(priorities: bool = False, budget: bool = False) -> None:
    """Python bytecodes executed per checkout, by engine: exact and the same on a busy machine
    (C work, libpq and the server are not counted; see --instructions for those)."""
    from django_poolguard.conf import guard_settings

    guard_settings.MONITOR_INTERVAL = 3600.0
    count = [0]

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode":
            count[0] += 1
        return tracer

    rows = engine_rows(priorities, budget)
    print("Python bytecodes per checkout (acquire + SELECT 1 + release), sys.settrace opcode events")
    print()
    print("| engine | bytecodes per checkout | / native |")
    print("|---|---|---|")
    results: dict[str, float] = {}
    for name, (alias, capture, profile) in rows.items():
        guard_settings.CAPTURE_STACKS, guard_settings.PROFILE = capture, profile
        for _ in range(50):
            one_checkout(alias)
        count[0] = 0
        sys.settrace(tracer)
        for _ in range(500):
            one_checkout(alias)
        sys.settrace(None)
        results[name] = count[0] / 500
        print(f"| {name} | {results[name]:,.0f} | {results[name] / results['native']:.3f} |", flush=True)


def in_context(rounds: int = 5, checkouts: int = 5000) -> None:
    """Nanoseconds the acquire stack's capture and the profile's fold take inside real checkouts
    (one thread, the watchdog parked): each is timed where it runs, between two clock reads, with
    an empty timed call as the baseline. Far steadier than wall-clock slices (about 20 ns apart
    from run to run), and unlike a loop of the piece alone (a fold takes about 220 ns there) it
    counts the CPU caches as a checkout leaves them: cold."""
    from time import perf_counter_ns

    from django_poolguard.conf import guard_settings
    from django_poolguard.engine import stacks
    from django_poolguard.engine.profile import Profile

    guard_settings.MONITOR_INTERVAL = 3600.0
    guard_settings.CAPTURE_STACKS = guard_settings.PROFILE = True
    one_checkout("poolguard")
    park_watchdog()
    spent = [0, 0]
    capture, fold = stacks.capture, Profile.fold

    def timed(function: Any) -> Any:
        def run(*args: Any) -> Any:
            started = perf_counter_ns()
            result = function(*args)
            spent[0] += perf_counter_ns() - started
            spent[1] += 1
            return result

        return run

    def timed_capture(skip: int = 1, depth: int = 20, skip_codes: frozenset[int] = frozenset()) -> Any:
        # One frame more than the caller's: skip it, or the capture would start here, miss the
        # plumbing and walk it (a path no checkout takes). So every stack is checked.
        started = perf_counter_ns()
        result = capture(skip + 1, depth, skip_codes)
        spent[0] += perf_counter_ns() - started
        spent[1] += 1
        if result[:1] != (one_checkout.__code__,):
            raise SystemExit("--in-context: the acquire stack does not start at the checkout's caller")
        return result

    # Each piece: what it replaces while it is measured.
    pieces = {
        "an empty call (the baseline)": ("fold", timed(lambda *args: None)),
        "the acquire stack's capture": ("capture", timed_capture),
        "the profile's fold": ("fold", timed(fold)),
    }
    results: dict[str, list[float]] = {name: [] for name in pieces}
    for _ in range(rounds):
        for name, (where, replacement) in pieces.items():
            stacks.capture, Profile.fold = capture, fold  # type: ignore[method-assign]
            if where == "capture":
                stacks.capture = replacement
            else:
                Profile.fold = replacement  # type: ignore[method-assign]
            spent[:] = [0, 0]
            for _ in range(checkouts):
                one_checkout("poolguard")
            results[name].append(spent[0] / max(1, spent[1]))
    stacks.capture, Profile.fold = capture, fold  # type: ignore[method-assign]
    print(f"Nanoseconds per checkout inside {checkouts:,} checkouts, median of {rounds} rounds (one thread)")
    print(
        f"Python {sys.version.split()[0]}, Django {django.__version__}, stack walked in "
        f"{'C' if stacks.ACCELERATED else 'Python'}"
    )
    print()
    print("| piece | ns per checkout, timed in place | rounds |")
    print("|---|---|---|")
    for name, values in results.items():
        spread = ", ".join(f"{v:,.0f}" for v in values)
        print(f"| {name} | {statistics.median(values):,.0f} | {spread} |")


def run_checkouts(checkouts: str, alias: str, capture: str, timeouts_via: str, profile: str) -> None:
    configure(capture_stacks=capture == "on", timeouts_via=timeouts_via or None)
    from django_poolguard.conf import guard_settings

    guard_settings.PROFILE = profile != "off"

    guard_settings.MONITOR_INTERVAL = 3600.0
    one_checkout(alias)  # opens the pool (a guarded one starts the watchdog)
    park_watchdog()
    for _ in range(int(checkouts)):
        one_checkout(alias)


def park_watchdog() -> None:
    """Stop the watchdog after its first pass: its work is per second, not per checkout. Left
    running, the first pass (imports, metrics registration) can outlast a short run under
    valgrind, and what the short run missed of it was counted against the checkouts."""
    from django_poolguard.runtime import get_runtime

    get_runtime().watchdog.stop(timeout=600)


def main() -> None:
    if sys.argv[1:2] == ["--run-checkouts"]:
        run_checkouts(*sys.argv[2:7])  # type: ignore[arg-type]
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slice", type=float, default=0.25, help="seconds of one engine's slice")
    parser.add_argument("--rounds", type=int, default=40, help="cycles: each engine runs one slice per cycle")
    parser.add_argument(
        "--pin",
        type=int,
        metavar="CPU",
        help="run this process on one CPU only (the server keeps the others): on a small machine the"
        " client's threads otherwise hand Python's lock from core to core, and 8-thread figures"
        " swing by 30 %% from one slice to the next",
    )
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--skip-nopool", action="store_true", help="leave out the (slow) no-pool column")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="ENGINE",
        help='measure only these engines (row names, e.g. poolguard "profile off") beside native and'
        " native, again: with fewer engines each cycle is shorter, so more cycles fit and the medians"
        " tighten",
    )
    parser.add_argument("--instructions", action="store_true", help="count CPU instructions with valgrind")
    parser.add_argument("--opcodes", action="store_true", help="count Python bytecodes per checkout")
    parser.add_argument(
        "--in-context",
        action="store_true",
        help="time the acquire stack's capture and the profile's fold where they run, inside checkouts",
    )
    parser.add_argument(
        "--priorities",
        action="store_true",
        help='add "poolguard, priorities": an alias with reserve {"critical": 2, "normal": 1}',
    )
    parser.add_argument(
        "--fleet-budget",
        action="store_true",
        help='add "poolguard, fleet budget": an alias under a fleet budget\'s lease (fleet_budget 100)',
    )
    parser.add_argument(
        "--timeouts-via",
        choices=["startup", "set"],
        help="give poolguard's alias a statement_timeout delivered this way (default: none)",
    )
    args = parser.parse_args()
    if args.rounds < 2 or args.slice <= 0:
        parser.error(
            "--rounds needs at least 2 cycles (the middle half of the ratios) and --slice a positive length"
        )
    if args.pin is not None and args.pin not in os.sched_getaffinity(0):
        parser.error(f"--pin {args.pin}: this process may run on CPUs {sorted(os.sched_getaffinity(0))} only")
    if args.opcodes:
        configure(capture_stacks=True)
        opcodes(args.priorities, args.fleet_budget)
        return
    if args.in_context:
        if args.pin is not None:
            os.sched_setaffinity(0, {args.pin})
        configure(capture_stacks=True)
        in_context()
        return
    if args.instructions:
        configure(capture_stacks=True, timeouts_via=args.timeouts_via)
        instructions(args.timeouts_via, args.priorities, args.fleet_budget)
        return
    if args.pin is not None:
        os.sched_setaffinity(0, {args.pin})
    configure(capture_stacks=True, timeouts_via=args.timeouts_via)
    from django_poolguard.conf import guard_settings

    rows = engine_rows(args.priorities, args.fleet_budget, profile_off="profile off")
    # The control: a second alias of Django's pool, to show what the machine's noise alone makes of it.
    engines = {"native": rows.pop("native"), "native, again": ("native_again", True, True), **rows}
    if not args.skip_nopool:
        engines["no pool"] = ("nopool", True, True)
    if args.only:
        unknown = sorted(set(args.only) - set(engines))
        if unknown:
            parser.error(f"--only {' '.join(unknown)}: the engines are {', '.join(map(repr, engines))}")
        engines = {
            name: row for name, row in engines.items() if name in ("native", "native, again", *args.only)
        }
    print(
        f"checkouts/s (acquire + SELECT 1 + release): {args.rounds} cycles of {args.slice:g} s slices,"
        " every engine once per cycle, the order turning each cycle"
    )
    pinned = f", this process on CPU {args.pin}" if args.pin is not None else ""
    print(f"Python {sys.version.split()[0]}, Django {django.__version__}, {os.cpu_count()} CPUs{pinned}")
    if args.timeouts_via:
        print(f"poolguard's alias: statement_timeout 30 s, timeouts_via={args.timeouts_via!r}")
    print()
    # Ratios are paired: each slice's figure over native's in the same cycle, then the median and
    # the middle half (25th-75th percentile) of those ratios. "native, again" is Django's pool
    # against itself: how far apart two identical engines measure on this machine.
    others = [name for name in engines if name not in ("native", "no pool")]
    print(_header(engines, others))
    names = list(engines)
    cpu_rows = []
    for threads in args.threads:
        runner = Interleaved(threads, args.slice)
        for alias, _, _ in engines.values():
            runner.slice(alias)  # opens the pools and each thread's wrappers, before timing
        results: dict[str, list[float]] = {name: [] for name in engines}
        cpu: dict[str, list[float]] = {name: [] for name in engines}
        for cycle in range(args.rounds):
            turn = cycle % len(names)
            for name in names[turn:] + names[:turn]:
                alias, capture, profile = engines[name]
                guard_settings.CAPTURE_STACKS = capture
                guard_settings.PROFILE = profile
                rate, cpu_us = runner.slice(alias)
                results[name].append(rate)
                cpu[name].append(cpu_us)
        runner.close()
        guard_settings.reload()
        print(f"| {threads} | {_cells(results, engines)} | {_paired(results, others)} |", flush=True)
        cpu_rows.append(f"| {threads} | {_cells(cpu, engines, '.1f')} | {_paired(cpu, others)} |")
    print()
    print("Client CPU per checkout, microseconds (this process, all threads), medians and paired ratios:")
    print()
    print(_header(engines, others))
    print("\n".join(cpu_rows))


def _header(engines: dict[str, Any], others: list[str]) -> str:
    names = [*engines, *(f"{name} / native" for name in others)]
    return f"| threads | {' | '.join(names)} |\n|---|" + "---|" * len(names)


def _cells(results: dict[str, list[float]], engines: dict[str, Any], spec: str = ",.0f") -> str:
    return " | ".join(format(statistics.median(results[name]), spec) for name in engines)


def _paired(results: dict[str, list[float]], others: list[str]) -> str:
    """Each slice over native's in the same cycle: the median, and the middle half in brackets."""
    cells = []
    for name in others:
        paired = [a / b for a, b in zip(results[name], results["native"], strict=True)]
        low, _, high = statistics.quantiles(paired, n=4)
        cells.append(f"{statistics.median(paired):.3f} ({low:.2f}-{high:.2f})")
    return " | ".join(cells)


if __name__ == "__main__":
    main()
