"""Fault storms against Django's own pool and poolguard, side by side.

Each storm runs in a fresh process (tests/fault_storm.py): threads churn checkouts on a pool of 3
while a fault strikes, then the process tries for 8 s to hold all 3 connections at once.

- ``async``: asynchronous exceptions (``PyThreadState_SetAsyncExc``) land inside checkouts and
  returns, as a Celery soft time limit, ``KeyboardInterrupt`` or a gevent timeout would;
- ``kill``: every pooled session is ended with ``pg_terminate_backend``, five times;
- ``gc``: Django connection objects are garbage-collected inside a transaction.

An outcome is ``fine`` (all held; for poolguard, ``get_stats()``, ledger and ``pg_stat_activity``
agree), ``slot lost`` (the pool times out for good) or ``wedged`` (threads stuck inside the pool).

    python tests/benchmarks/bench_fault_storm.py [--storms 10] [--kinds async kill gc] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.fault_storm import KINDS, Outcome, run_storm

LABELS = {"fine": "fine", "lost": "slot lost", "wedged": "wedged"}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--storms", type=int, default=10, help="storms per engine and kind")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--seed", type=int, default=0, help="first seed; storm i uses seed + i")
    args = parser.parse_args()

    results: dict[tuple[str, str], list[Outcome]] = {}
    for kind in args.kinds:
        for index in range(args.storms):
            for engine in ("django", "poolguard"):  # interleaved, so machine drift hits both alike
                outcome = run_storm(engine, kind, args.seed + index)
                results.setdefault((kind, engine), []).append(outcome)
                print(
                    f"  {kind:5} {engine:9} seed {outcome.seed:3}: {LABELS[outcome.outcome]:9} "
                    f"landed={sum(outcome.landed.values()):3} repairs={outcome.violations} "
                    f"reclaimed={outcome.reclaimed}{' replaced' if outcome.replaced else ''}"
                    f"{'' if outcome.agree or outcome.outcome != 'fine' else f' DISAGREE {outcome.counts}'}",
                    file=sys.stderr,
                    flush=True,
                )

    print(
        f"Fault storms: pool of 3, 3 churning threads, each storm in a fresh process ({sys.version.split()[0]})"
    )
    print()
    print("| storm | engine | storms | fine | slot lost | wedged | agree* | repairs** | exceptions landed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind in args.kinds:
        for engine in ("django", "poolguard"):
            outcomes = results[(kind, engine)]
            tally = Counter(o.outcome for o in outcomes)
            landed: Counter[str] = Counter()
            for o in outcomes:
                landed.update(o.landed)
            where = ", ".join(f"{package} {n}" for package, n in landed.most_common()) or "-"
            agree = sum(1 for o in outcomes if o.agree)
            repairs = (
                f"{sum(o.violations for o in outcomes)} slot repairs, {sum(o.reclaimed for o in outcomes)} "
                f"reclaims, {sum(o.replaced for o in outcomes)} replaced"
                if engine == "poolguard"
                else "-"
            )
            print(
                f"| {kind} | {engine} | {len(outcomes)} | {tally['fine']} | {tally['lost']} | "
                f"{tally['wedged']} | {agree} | {repairs} | {where} |"
            )
    print()
    print("* storms where, with all 3 held, get_stats() pool_size, the ledger (poolguard) and")
    print("  pg_stat_activity all said 3 and pool_available 0.")
    print("** what poolguard's watchdog did: slot-check violations repaired, connections reclaimed")
    print("   from collected wrappers or dead threads, wedged pools replaced.")


if __name__ == "__main__":
    main()
