"""Fault storms, each in a fresh process (tests/fault_storm.py): whatever strikes the checkouts,
afterwards every connection of the pool can be held at once, and the pool's ``get_stats()``, the
ledger and ``pg_stat_activity`` agree.

- asynchronous exceptions thrown into threads churning checkouts, landing in poolguard's code,
  psycopg_pool's, psycopg's and Django's (a Celery soft time limit, ``KeyboardInterrupt``);
- every pooled session ended with ``pg_terminate_backend`` under threaded load;
- Django connection objects garbage-collected inside a transaction.

tests/benchmarks/bench_fault_storm.py runs the same storms against Django's own pool.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.fault_storm import Outcome, run_storm

pytestmark = pytest.mark.slow

STORMS = [("async", seed) for seed in range(14)] + [("kill", seed) for seed in range(3)]
STORMS += [("gc", seed) for seed in range(3)]


def test_poolguard_survives_every_storm():
    with ThreadPoolExecutor(max_workers=2) as runner:
        outcomes: list[Outcome] = list(
            runner.map(lambda storm: run_storm("poolguard", storm[0], storm[1]), STORMS)
        )
    assert len(outcomes) >= 20
    failed = [o for o in outcomes if o.outcome != "fine" or not o.agree]
    assert not failed, "\n".join(
        f"{o.kind}/{o.seed}: {o.outcome} {o.detail} counts={o.counts} landed={o.landed}" for o in failed
    )
    for outcome in outcomes:
        assert outcome.counts["pool_size"] == outcome.counts["ledger"] == outcome.counts["sessions"] == 3
        assert outcome.counts["pool_available"] == 0

    landed: Counter[str] = Counter()
    for outcome in outcomes:
        landed.update(outcome.landed)
    assert landed["psycopg_pool"] > 0 and landed["django_poolguard"] + landed["psycopg_pool"] >= 3, landed
    assert sum(o.violations for o in outcomes if o.kind == "async") > 0, "the storms never hurt the pool"
    assert all(o.reclaimed >= 1 for o in outcomes if o.kind == "gc"), "collected wrappers were reclaimed"
