"""The fleet budget on the dashboard in a real headless Chromium: the alias card's leased of
budget, the capped reason, and the "fallback: static share" badge appearing on a refresh
without a reload when a process loses its lease store. Processes with a lease are published
into the real snapshot table, as budgeted processes publish them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.fleet.test_fleet_entries import entry_for, insert_row
from tests.web.test_admin_browser import (
    REFRESH,
    ReportThread,
    _close_side_connections,
    browser_page,
    images,
    superuser,
)

__all__ = ["_close_side_connections", "browser_page", "images", "superuser"]  # fixtures used here

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CAPPED = "capped at 4 by fleet budget 12 over 3 processes"


def leased_entry(alias: str, host: str, pid: int, **lease: Any) -> str:
    entry = entry_for(alias, host, pid)
    entry["aliases"][alias]["max"] = 6
    entry["aliases"][alias]["lease"] = {
        "budget": 12,
        "lease": 4,
        "share": 4,
        "members": 3,
        "fleet_held": 12,
        "store": "database",
        "fallback": False,
        "capped": CAPPED,
        **lease,
    }
    return json.dumps(entry)


def test_fleet_budget_on_the_card_in_chromium(live_server, make_alias, browser_page, images: Path) -> None:
    alias = make_alias(pool={"min_size": 0, "max_size": 6, "timeout": 2}, poolguard={"workload": "web"})
    page = browser_page
    with ReportThread(alias, "budget-report"):
        # Built before the browser's event loop runs in this thread (no ORM there).
        rows = [leased_entry(alias, f"web-{n}", 100 + n) for n in range(3)]
        stranded = leased_entry(
            alias,
            "web-9",
            109,
            lease=2,
            fallback=True,
            capped="capped at 2 by the static share of fleet budget 12 (store unreachable)",
        )
        for n, row in enumerate(rows):
            insert_row(f"web-{n}", 100 + n, row)

        page.goto(f"{live_server.url}/admin/login/?next=/admin/django_poolguard/pool/?refresh={REFRESH}")
        page.fill("#id_username", "admin")
        page.fill("#id_password", "pw")
        page.click("input[type=submit]")
        page.wait_for_url("**/admin/django_poolguard/pool/**")

        card = page.locator(f'article.pg-card[data-alias="{alias}"]')
        budget = card.locator(".pg-fleet-budget")
        assert budget.is_visible()
        assert card.locator(".pg-fleet-leased").inner_text() == "12"
        assert card.locator(".pg-fleet-budget-total").inner_text() == "12"
        assert card.locator(".pg-fleet-share").inner_text() == "4"
        assert "leased by 3 processes" in budget.inner_text()
        assert card.locator(".pg-capped li").first.inner_text() == f"{CAPPED} (3 processes)"
        assert card.locator(".pg-fallback").count() == 0
        for n in range(3):
            row = page.locator("table.pg-processes tr", has_text=f"web-{n}")
            assert row.locator("td.pg-lease").inner_text() == "4 capped"
        own = page.locator("table.pg-processes tr", has_text="live (this process)").filter(has_text=alias)
        assert own.locator("td.pg-lease").inner_text() == "-"  # no budget on this process's alias

        # A fourth process comes up without its lease store: the badge appears on the next refresh.
        page.evaluate("window.__poolguardMarker = 'same page'")
        insert_row("web-9", 109, stranded)
        page.wait_for_function(
            f"""() => document.querySelector('article.pg-card[data-alias="{alias}"] .pg-fallback') !== null""",
            timeout=REFRESH * 1000 * 10,
        )
        assert page.evaluate("window.__poolguardMarker") == "same page"
        badge = card.locator(".pg-fallback")
        assert badge.is_visible() and badge.inner_text().lower() == "fallback: static share"
        assert "web-9:109" in (badge.get_attribute("title") or "")
        assert card.locator(".pg-fleet-leased").inner_text() == "14"
        assert card.locator(".pg-status", has_text="over budget").is_visible()
        reasons = card.locator(".pg-capped li").all_inner_texts()
        assert "capped at 2 by the static share of fleet budget 12 (store unreachable)" in reasons
        row = page.locator("table.pg-processes tr", has_text="web-9")
        assert "fallback: static share" in row.inner_text()

        # A phone screen: the longer card still fits.
        page.set_viewport_size({"width": 390, "height": 844})
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow}px wider than a phone screen"
        page.set_viewport_size({"width": 1280, "height": 900})
        card.screenshot(path=str(images / "dashboard-fleet-budget.png"))
