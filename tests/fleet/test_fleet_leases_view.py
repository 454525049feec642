"""Fleet budgets in every reader: each process's lease beside its max, the live processes'
leases summed against the budget, why a pool is capped, and the static-share fallback, in
``poolstats`` (text, ``--json``, ``--check``) and the admin. Entries with a ``lease`` go
straight into the real publish table, as processes with a budgeted pool publish them; hostile
ones (control characters, huge numbers) are shown escaped or skipped and reported."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from django_poolguard.engine.side_connection import close_all
from django_poolguard.fleet.lease_totals import fleet_lease
from django_poolguard.fleet.leases import lease_snapshot
from tests.fleet.test_fleet_entries import (
    DASHBOARD,
    DATA,
    entry_for,
    insert_row,
    own_alias,
    poolstats,
    poolstats_check,
)
from tests.integrations.test_lease_metrics import budgeted, wait_for

__all__ = ["budgeted", "own_alias"]  # fixtures used by this module

pytestmark = pytest.mark.django_db(transaction=True)

CAPPED = "capped at 4 by fleet budget 12 over 3 processes"


@pytest.fixture(autouse=True)
def _close_side_connections() -> Iterator[None]:
    yield
    close_all()


def lease(**changes: Any) -> dict[str, Any]:
    base = {
        "budget": 12,
        "lease": 4,
        "share": 4,
        "members": 3,
        "fleet_held": 12,
        "store": "database",
        "fallback": False,
        "capped": CAPPED,
    }
    return {**base, **changes}


def publish_leased(
    alias: str, host: str, pid: int, max_size: int | None = 6, **changes: Any
) -> dict[str, Any]:
    """A process of ``alias``'s workload with a lease, as it publishes it: its pool's max follows
    the lease, and the lease names the configured ``max_size`` (``None``: an entry without it)."""
    entry = entry_for(alias, host, pid)
    published = lease(**changes)
    entry["aliases"][alias]["max"] = min(published["lease"], max_size or 2**53)
    if max_size is not None:
        published["max_size"] = max_size
    entry["aliases"][alias]["lease"] = published
    insert_row(host, pid, json.dumps(entry))
    return entry


def admin_page(url: str = DASHBOARD) -> str:
    client = Client()
    client.force_login(User.objects.get_or_create(username="root", is_staff=True, is_superuser=True)[0])
    response = client.get(url)
    assert response.status_code == 200
    return response.content.decode() if url == DASHBOARD else response.json()["html"]


def test_poolstats_shows_each_lease_the_fleet_total_and_why_pools_are_capped(own_alias: str) -> None:
    for n in range(3):
        publish_leased(own_alias, f"web-{n}", 100 + n)

    text = poolstats()
    # The fleet line sums the leases of the processes that publish one (not this test process,
    # whose alias has no budget), against the budget.
    assert f"Fleet budget of {own_alias}: 12 of 12 leased by 3 processes (fair share 4)" in text, text
    assert text.count("max 6, lease 4") == 3
    assert "Capped by a fleet budget:" in text
    assert f"  web-1:101 {own_alias}: {CAPPED}" in text
    assert "OVER" not in text

    data = json.loads(poolstats("--json"))
    fleet = data["aliases"][own_alias]["fleet"]
    assert fleet["budget"] == 12 and fleet["leased"] == 12 and fleet["processes"] == 3 and fleet["share"] == 4
    assert fleet["over"] is False and fleet["fallback"] == [] and len(fleet["capped"]) == 3
    leases = [p["aliases"][own_alias].get("lease") for p in data["processes"]]
    assert leases.count(None) == 1 and leases.count({**lease(), "max_size": 6}) == 3  # this one, then three

    code, line = poolstats_check()
    assert code == 0, line


def test_leases_over_the_budget_and_a_fallback_are_warnings(own_alias: str) -> None:
    publish_leased(own_alias, "web-1", 101, lease=8, capped=None)
    publish_leased(own_alias, "web-2", 102, lease=6, fallback=True, capped=None, store="cache")

    text = poolstats()
    assert (
        "14 of 12 leased by 2 processes (fair share 4), 2 OVER the budget; "
        "the lease store counts 3 members, 1 not in this view"
    ) in text, text
    assert "1 on the static share (lease store unreachable)" in text
    assert f"web-2:102 {own_alias}: fallback: static share of 6 (cache lease store unreachable)" in text
    assert "max 6, lease 6 (static share)" in text

    code, line = poolstats_check()
    assert code == 1 and line.startswith("POOLGUARD WARNING"), line
    assert f"{own_alias}: 14 of fleet budget 12 leased" in line
    assert f"{own_alias}: 1 process on the static share, lease store unreachable (web-2:102)" in line
    code, document = poolstats_check("--json")
    assert code == 1 and json.loads(document)["status"] == "warning"

    page = admin_page()
    card = page[page.index(f'data-alias="{own_alias}"') :]
    card = card[: card.index("</article>")]
    assert "fallback: static share" in card and "over budget" in card
    assert (
        'class="pg-fleet-leased">14</strong>' in card and 'class="pg-fleet-budget-total">12</strong>' in card
    )
    assert "fallback: static share" in admin_page(DATA)  # the page's refreshes show it too


def test_an_entry_without_max_size_shows_its_published_max(own_alias: str) -> None:
    publish_leased(own_alias, "web-1", 101, max_size=None)
    assert "max 4, lease 4" in poolstats()


def test_a_rolling_deploy_changing_the_budget_is_named(own_alias: str) -> None:
    publish_leased(own_alias, "web-1", 101, budget=12)
    publish_leased(own_alias, "web-2", 102, budget=20)
    text = poolstats()
    assert "8 of 20 leased by 2 processes (fair share 6)" in text
    assert "the processes disagree on the budget (12, 20): a deploy is changing it" in text


def test_the_admin_card_lists_each_capped_reason_once(own_alias: str) -> None:
    for n in range(3):
        publish_leased(own_alias, f"web-{n}", 100 + n)
    publish_leased(own_alias, "web-9", 109, capped="capped at 3 by fleet budget 12 over 4 processes", lease=3)
    page = admin_page()
    assert page.count(CAPPED) == 1 + 3  # the card once, plus each process row's tooltip
    assert "(3 processes)" in page
    assert "capped at 3 by fleet budget 12 over 4 processes" in page
    assert "15 of" not in page  # 4+4+4+3
    assert 'class="pg-fleet-leased">15</strong>' in page and "over budget" in page


def test_an_alias_without_a_budget_shows_nothing_of_it(own_alias: str) -> None:
    insert_row("web-1", 101, json.dumps(entry_for(own_alias, "web-1", 101)))
    text = poolstats()
    assert "Fleet budget" not in text and "Capped" not in text
    assert "fleet" not in json.loads(poolstats("--json"))["aliases"][own_alias]
    assert "pg-fleet-budget" not in admin_page()


# --- hostile entries -------------------------------------------------------------------------------

HOSTILE_CAPPED = (
    "capped at 1\x1b[2J\x1b]0;pwned\x07 by\r\nPOOLGUARD OK - forged\u202e <script>alert(1)</script>"
)


def test_control_characters_in_a_capped_reason_are_shown_not_obeyed(own_alias: str) -> None:
    publish_leased(own_alias, "web-1", 101, capped=HOSTILE_CAPPED, fallback=True)
    text = poolstats()
    assert "\x1b" not in text and "\r" not in text and "\x07" not in text and "\u202e" not in text
    assert "capped at 1\\x1b[2J\\x1b]0;pwned\\x07 by\\r\\nPOOLGUARD OK - forged\\u202e" in text
    code, line = poolstats_check()
    assert code == 1 and "\n" not in line.rstrip("\n") and "\x1b" not in line
    document = poolstats("--json")
    assert "\x1b" not in document  # JSON escapes every control character
    assert json.loads(document)["aliases"][own_alias]["fleet"]["capped"][0]["capped"] == HOSTILE_CAPPED

    page = admin_page()
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # Shown, not obeyed, on the page too: no bidi override reorders the card's text.
    assert "\u202e" not in page and "\x1b" not in page and "forged\\u202e" in page
    assert "<script>alert(1)</script>" not in admin_page(DATA)


def test_a_capped_reason_of_a_megabyte_is_cut(own_alias: str) -> None:
    publish_leased(own_alias, "web-1", 101, capped="capped " + "x" * 1_000_000)
    text = poolstats()
    assert len(text) < 20_000 and "capped xxx" in text and "x..." in text


def test_huge_numbers_in_a_lease_are_bounded_or_refused(own_alias: str) -> None:
    publish_leased(own_alias, "web-1", 101, budget=2**53, lease=2**53, share=2**53, fleet_held=2**53)
    publish_leased(own_alias, "web-2", 102, lease=10**400)
    publish_leased(own_alias, "web-3", 103, budget=-1)
    publish_leased(own_alias, "web-4", 104, members=1.5)
    publish_leased(own_alias, "web-5", 105, max_size=10**400)
    data = json.loads(poolstats("--json"))
    reasons = {(u["host"], u["reason"].split(":")[0]) for u in data["unreadable"]}
    assert reasons == {
        ("web-2", f"aliases.{own_alias}.lease.lease"),
        ("web-3", f"aliases.{own_alias}.lease.budget"),
        ("web-4", f"aliases.{own_alias}.lease.members"),
        ("web-5", f"aliases.{own_alias}.lease.max_size"),
    }
    assert any("an integer of 1329 bits" in u["reason"] for u in data["unreadable"])
    fleet = data["aliases"][own_alias]["fleet"]
    assert fleet["budget"] == fleet["leased"] == 2**53 and fleet["share"] == 2**53 // 3
    text = poolstats()
    assert f"{2**53} of {2**53} leased by 1 process (fair share {2**53 // 3})" in text
    assert "! 4 snapshots unreadable:" in text
    assert str(2**53) in admin_page()


def test_fleet_lease_sums_only_the_processes_with_a_lease() -> None:
    def process(host: str, pool: dict[str, Any]) -> Any:
        return {"host": host, "pid": 1, "role": "web", "schema": 2, "aliases": {"default": pool}}

    processes = [
        process("a", {"max": 6, "lease": lease(lease=5, capped=None)}),
        process("b", {"max": 6}),
        process(
            "c",
            {"max": 6, "lease": lease(lease=0, capped="capped at 0 by fleet budget 12 over 13 processes")},
        ),
    ]
    fleet = fleet_lease(processes, "default")
    assert fleet is not None
    assert (fleet["leased"], fleet["processes"], fleet["members"], fleet["share"]) == (5, 2, 3, 4)
    assert [c["host"] for c in fleet["capped"]] == ["c"]
    assert fleet_lease(processes, "other") is None
    assert fleet_lease([process("b", {"max": 6})], "default") is None


# --- end to end: this process's real budgeted pools ---------------------------------------------


def test_a_real_budgeted_pool_in_poolstats_and_the_admin(budgeted: Callable[..., str]) -> None:
    """Two budgeted aliases of one workload in this process are two members of one budget: each
    leases half of it, and every reader shows the lease, the fleet line and the capped reason."""
    first = budgeted(6, workload="split")
    second = budgeted(6, workload="split")
    for alias in (first, second):
        wait_for(alias, lambda s: s["lease"] == 3 and s["members"] == 2)

    text = poolstats()
    for alias in (first, second):
        # One budget (one workload on one database) shared by two aliases: the store's members count.
        assert (
            f"Fleet budget of {alias} (workload split): 3 of 6 leased by 1 process (fair share 3); "
            "the lease store counts 2 members, 1 not in this view"
        ) in text
    # The configured max_size once the engine publishes it, else the (capped) published max.
    max_size = lease_snapshot(first).get("max_size", 3)  # type: ignore[union-attr]
    assert text.count(f"max {max_size}, lease 3") == 2
    assert "capped at 3 by fleet budget 6 over 2 processes" in text
    code, line = poolstats_check()
    assert code == 0, line

    data = json.loads(poolstats("--json"))
    [own] = [p for p in data["processes"] if p["aliases"].get(first, {}).get("lease")]
    assert own["aliases"][first]["lease"]["members"] == 2
    assert 0 < own["aliases"][first]["lease"]["fleet_held"] <= 6  # as the store saw it, a heartbeat ago

    page = admin_page()
    assert "capped at 3 by fleet budget 6 over 2 processes" in page
    assert "fallback: static share" not in page


def test_a_real_pool_without_its_lease_store_shows_the_fallback(
    budgeted: Callable[..., str], settings: Any
) -> None:
    settings.CACHES = {
        **settings.CACHES,
        "gone": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
        },
    }
    settings.POOLGUARD = {**settings.POOLGUARD, "DEPLOYMENT": {"stranded": {"instances": 2, "processes": 1}}}
    alias = budgeted(6, workload="stranded", lease_store="cache", lease_cache="gone")
    max_size = wait_for(alias, lambda s: s["fallback"]).get("max_size", 3)

    text = poolstats()
    assert f"max {max_size}, lease 3 (static share)" in text
    assert (
        f"{alias}: capped at 3 by the static share of fleet budget 6 (store unreachable); fallback: static share of 3 (cache lease store unreachable)"
        in text
    )
    code, line = poolstats_check()
    assert code == 1 and f"{alias}: 1 process on the static share, lease store unreachable" in line, line
    assert "fallback: static share" in admin_page()
