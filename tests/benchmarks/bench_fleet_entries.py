"""What checking published snapshots costs a fleet reader, next to decoding them.

    python tests/benchmarks/bench_fleet_entries.py [--processes 200] [--repeat 15]

No database: a large snapshot of this release's shape (2 aliases, 10 checkouts with 20
stack frames each, the full 181-point history per alias) is decoded from JSON and then
checked by ``fleet_entries.read_entries`` (with and without the history points), N times, interleaved so both see the same load;
timed in CPU time (``process_time``), which other load on the machine disturbs less than wall time.
Prints the medians per entry and per fleet view.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")


def large_entry() -> dict[str, Any]:
    pool = {
        "workload": "web",
        **{key: 10 for key in ("min", "max", "size", "in_use")},
        "idle": 0,
        "waiting": 3,
        "utilization": 1.0,
        "status": "warning",
        "acquire_ms": {"p50": 0.1, "p95": 0.5, "p99": 1.5},
        "held_ms": {"p50": 1.0, "p95": 5.0, "p99": 9.0},
        "reclaimed_by_reason": {"dead_thread": 1},
        "leak_threshold": 30.0,
        "checkouts": [
            {
                "thread": f"web-{i}",
                "alive": True,
                "held_s": 2.5,
                "wait_ms": 0.2,
                "context": "GET /report",
                "in_transaction": False,
                "stack": [f"shop/views.py:{n} in report" for n in range(20)],
            }
            for i in range(10)
        ],
        "history": [[1000.0 + 5 * i, 10, 0, 3, 10, 0.5] for i in range(181)],
    }
    return {
        "host": "web-1",
        "pid": 4242,
        "role": "web",
        "updated_at": "2026-01-01T00:00:00+00:00",
        "publish_interval": 5.0,
        "aliases": {"default": pool, "reports": pool},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--processes", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()

    import django

    django.setup()
    from django_poolguard.fleet.schema import RawEntry, read_entries

    text = json.dumps(large_entry())
    texts = [text] * args.processes
    decode, check, check_no_history = [], [], []
    for _ in range(args.repeat):
        started = time.process_time()
        raws = [RawEntry(json.loads(t), 0.0) for t in texts]
        decode.append(time.process_time() - started)
        started = time.process_time()
        readable, unreadable = read_entries(raws)
        check.append(time.process_time() - started)
        assert len(readable) == args.processes and not unreadable
        started = time.process_time()
        read_entries(raws, history=False)
        check_no_history.append(time.process_time() - started)
    per = 1e6 / args.processes
    print(f"{args.processes} snapshots of {len(text)} bytes each, median of {args.repeat} runs:")
    print("| step | per snapshot | per fleet view |")
    print("|---|---|---|")
    for label, samples in (
        ("json.loads", decode),
        ("read_entries (the admin: with history)", check),
        ("read_entries(history=False) (poolstats)", check_no_history),
    ):
        median = statistics.median(samples)
        print(f"| {label} | {median * per:.0f} us | {median * 1000:.1f} ms |")


if __name__ == "__main__":
    main()
