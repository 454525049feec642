"""What redacting session SQL costs per session, and that hostile input stays linear.

Run from the repository root (no database needed)::

    /work/venv/bin/python tests/benchmarks/bench_redaction.py [--rounds 2000]

Prints microseconds per statement for an ordinary query (no keyword: one regex search), a
sensitive 1 kB statement (the lexer runs), and per megabyte for inputs built to make a naive
regular expression backtrack or a recursive scanner overflow (``track_activity_query_size``
can be raised to 1 MB, and any database user chooses the text).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from django_poolguard.escaping import escape_controls
from django_poolguard.fleet.redaction import redact_sql

ORDINARY = (
    'SELECT "shop_order"."id", "shop_order"."status", "shop_order"."total" FROM "shop_order" '
    'WHERE ("shop_order"."customer_id" = 42 AND "shop_order"."status" = \'shipped\') '
    'ORDER BY "shop_order"."created" DESC LIMIT 21'
)
SENSITIVE = (
    '/* app=shop,route=/accounts/password/ */ UPDATE "auth_user" SET "password" = '
    "'pbkdf2_sha256$1000000$c2FsdA$aGFzaA==', \"last_login\" = '2026-11-28T17:00:00+00:00'::timestamptz, "
    '"email" = E\'someone\\\'s@example.com\', "first_name" = $$O\'Brien$$ WHERE "auth_user"."id" = 7 '
    "-- postgresql://app:pw@db/shop\n"
) * 3


def per_call(function: Callable[[], object], rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        function()
    return (time.perf_counter() - start) / rounds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2000)
    rounds = parser.parse_args().rounds
    print(
        f"ordinary query ({len(ORDINARY)} chars): {per_call(lambda: redact_sql(ORDINARY, 500), rounds) * 1e6:.1f} us"
    )
    print(
        f"sensitive statement ({len(SENSITIVE)} chars): "
        f"{per_call(lambda: redact_sql(SENSITIVE, 500), rounds) * 1e6:.1f} us"
    )
    print(
        f"escape_controls, clean 500 chars: {per_call(lambda: escape_controls(ORDINARY), rounds) * 1e6:.2f} us"
    )
    megabyte = 1_000_000
    hostile = {
        "nested comments": "password /*" * (megabyte // 11),
        "URI-like runs": "password ://a:" * (megabyte // 14) + " ",
        "dollar signs": "password $a" * (megabyte // 11),
        "quotes": "password 'a' " * (megabyte // 13),
        "md5 words": "password " + "md5" * (megabyte // 3),
    }
    for name, text in hostile.items():
        elapsed = per_call(lambda text=text: redact_sql(text, 500), 1)  # type: ignore[misc]
        print(f"hostile 1 MB, {name}: {elapsed * 1000:.0f} ms")


if __name__ == "__main__":
    main()
