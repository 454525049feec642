"""Per-checkout cost: poolguard vs Django's native pool vs no pool, side by side in one run.

One operation = what a Django request does with the database at minimum: check a connection
out (``cursor()``), run ``SELECT 1``, give it back (``close()``). Engines are measured in
interleaved rounds so drift on the machine hits them alike; the median round counts.

    python tests/benchmarks/bench_checkout.py [--seconds 2] [--rounds 7] [--threads 1 8] [--skip-nopool]
    python tests/benchmarks/bench_checkout.py --instructions   # CPU instructions per checkout (valgrind)
    python tests/benchmarks/bench_checkout.py --opcodes        # Python bytecodes per checkout (exact)
    python tests/benchmarks/bench_checkout.py --priorities     # adds an alias with a priority reserve
    python tests/benchmarks/bench_checkout.py --fleet-budget   # adds an alias under a fleet budget's lease

"poolguard" runs with the pool-time profile (``POOLGUARD["PROFILE"]``, off unless turned on) on,
"profile off" without it; "poolguard, priorities" (``--priorities``) is an alias with a reserve and
the profile off, as priorities are turned on alone.

Wall-clock ratios are paired (each round over native's in the same round, then the median).
Wall-clock figures move with whatever else the machine runs; the instruction counts do not
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


def measure(alias: str, threads: int, seconds: float) -> float:
    """Checkouts per second over ``seconds`` with ``threads`` threads."""
    stop = time.monotonic() + seconds
    counts = [0] * threads
    barrier = threading.Barrier(threads + 1)

    def worker(index: int) -> None:
        one_checkout(alias)  # warm this thread's wrapper
        barrier.wait()
        n = 0
        while time.monotonic() < stop:
            one_checkout(alias)
            n += 1
        counts[index] = n

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    started = time.monotonic()
    for t in pool:
        t.join()
    return sum(counts) / (time.monotonic() - started)


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
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one round per engine")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--skip-nopool", action="store_true", help="leave out the (slow) no-pool column")
    parser.add_argument("--instructions", action="store_true", help="count CPU instructions with valgrind")
    parser.add_argument("--opcodes", action="store_true", help="count Python bytecodes per checkout")
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
    if args.opcodes:
        configure(capture_stacks=True)
        opcodes(args.priorities, args.fleet_budget)
        return
    if args.instructions:
        configure(capture_stacks=True, timeouts_via=args.timeouts_via)
        instructions(args.timeouts_via, args.priorities, args.fleet_budget)
        return
    configure(capture_stacks=True, timeouts_via=args.timeouts_via)
    from django_poolguard.conf import guard_settings

    engines = engine_rows(args.priorities, args.fleet_budget, profile_off="profile off")
    if not args.skip_nopool:
        engines["no pool"] = ("nopool", True, True)
    for alias, _, _ in engines.values():
        one_checkout(alias)  # open pools before timing

    print(
        f"checkouts/s (acquire + SELECT 1 + release), median of {args.rounds} interleaved rounds of {args.seconds:g} s"
    )
    print(f"Python {sys.version.split()[0]}, Django {django.__version__}, {os.cpu_count()} CPUs")
    if args.timeouts_via:
        print(f"poolguard's alias: statement_timeout 30 s, timeouts_via={args.timeouts_via!r}")
    print()
    # Ratios are paired: each round's figure over native's in the same round, then the median,
    # so a slow moment of the machine (which hits a whole round) cancels out.
    others = [name for name in engines if name not in ("native", "no pool")]
    print(f"| threads | {' | '.join(engines)} | {' | '.join(f'{name} / native' for name in others)} |")
    print("|---|" + "---|" * (len(engines) + len(others)))
    for threads in args.threads:
        results: dict[str, list[float]] = {name: [] for name in engines}
        for _ in range(args.rounds):
            for name, (alias, capture, profile) in engines.items():
                guard_settings.CAPTURE_STACKS = capture
                guard_settings.PROFILE = profile
                seconds = args.seconds if alias != "nopool" else min(args.seconds, 1.0)
                results[name].append(measure(alias, threads, seconds))
        guard_settings.reload()
        medians = {name: statistics.median(values) for name, values in results.items()}
        cells = " | ".join(f"{medians[name]:,.0f}" for name in engines)
        ratios = " | ".join(
            f"{statistics.median(a / b for a, b in zip(results[name], results['native'], strict=True)):.3f}"
            for name in others
        )
        print(f"| {threads} | {cells} | {ratios} |")


if __name__ == "__main__":
    main()
