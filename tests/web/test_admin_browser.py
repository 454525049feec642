"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright
without downloading a browser): log in, watch a holder appear and the numbers move without
a reload, open an acquire stack, and save the light and dark screenshots of docs/admin.md."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connections
from django.utils import timezone

from django_poolguard.engine import stacks
from django_poolguard.engine.context import checkout_context
from django_poolguard.engine.pool import get_pool
from django_poolguard.engine.side_connection import close_all
from django_poolguard.models import LeakEvent

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CHROMIUM = os.environ.get("POOLGUARD_CHROMIUM") or os.environ.get("CHROMIUM") or "/usr/bin/chromium"
DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REFRESH = 1  # s between the page's own refreshes in this test


def _playwright() -> Any:
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.skip(f"no Chromium at {CHROMIUM}: `apt-get install -y chromium` (or set POOLGUARD_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip(
            "the playwright package is not installed: `pip install playwright` (no browser download needed)"
        )
    return sync_playwright


def build_nightly_report(alias: str, holding: threading.Event, release: threading.Event) -> None:
    """Holds a connection of ``alias`` until released: the place the dashboard must name."""
    with checkout_context("GET /reports/nightly"):
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT 1")
            holding.set()
            release.wait(60)
        connections[alias].close()


class ReportThread(threading.Thread):
    def __init__(self, alias: str, name: str) -> None:
        self.holding, self.release = threading.Event(), threading.Event()
        super().__init__(
            target=build_nightly_report, args=(alias, self.holding, self.release), name=name, daemon=True
        )

    def __enter__(self) -> ReportThread:
        self.start()
        assert self.holding.wait(10), "the report thread never got a connection"
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.join(10)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """Where screenshots go: docs/images with POOLGUARD_SCREENSHOTS=1 (to refresh the docs),
    else a temporary directory, so a test run leaves the working tree clean."""
    directory = DOCS_IMAGES if os.environ.get("POOLGUARD_SCREENSHOTS") == "1" else tmp_path / "images"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture
def superuser(transactional_db: Any) -> User:
    # Created before the browser starts: Playwright's sync API runs an event loop in this
    # thread, and Django refuses ORM calls from a thread with a running loop.
    user = User.objects.create_superuser("admin", "admin@example.com", "pw")
    connections["default"].close()  # give the test thread's connection back; the page shows holders only
    return user


@pytest.fixture
def browser_page(superuser: User, tmp_path: Path) -> Iterator[Any]:
    sync_playwright = _playwright()
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh profile every run
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


@pytest.fixture(autouse=True)
def _close_side_connections() -> Iterator[None]:
    yield
    close_all()


def test_dashboard_live_in_chromium(live_server, make_alias, browser_page, images):
    alias = make_alias(pool={"min_size": 0, "max_size": 2, "timeout": 2}, poolguard={"workload": "reports"})
    page = browser_page
    dashboard = f"{live_server.url}/admin/django_poolguard/pool/?refresh={REFRESH}"

    with ReportThread(alias, "nightly-report-1"):
        page.goto(dashboard)
        assert "/admin/login/" in page.url
        page.fill("#id_username", "admin")
        page.fill("#id_password", "pw")
        page.click("input[type=submit]")
        page.wait_for_url("**/admin/django_poolguard/pool/**")

        card = page.locator(f'article.pg-card[data-alias="{alias}"]')
        assert card.locator(".pg-in-use").inner_text() == "1"
        assert card.locator(".pg-max").inner_text() == "2"
        assert "pg-card-healthy" in card.get_attribute("class")
        checkout = page.locator("table.pg-checkouts tr", has_text="nightly-report-1")
        assert "build_nightly_report" in checkout.inner_text()
        assert "GET /reports/nightly" in checkout.inner_text()

        # A second holder shows up on the next refresh, without reloading the page.
        page.evaluate("window.__poolguardMarker = 'same page'")
        with ReportThread(alias, "nightly-report-2"):
            page.wait_for_function(
                f"""() => document.querySelector('article.pg-card[data-alias="{alias}"] .pg-in-use')
                        ?.textContent.trim() === '2'""",
                timeout=REFRESH * 1000 * 10,
            )
            assert page.evaluate("window.__poolguardMarker") == "same page"
            # 2 of 2 in use is over ALERT_UTILIZATION: the card and its bar turn to "warning".
            assert "pg-card-warning" in card.get_attribute("class")
            assert card.locator(".pg-bar-fill.pg-fill-warning").count() == 1
            assert page.locator("table.pg-checkouts tr", has_text="nightly-report-2").count() == 1

            # Open the first report's acquire stack: the function holding the connection is its first line.
            stack = page.locator("table.pg-checkouts tr", has_text="nightly-report-1").locator("details")
            stack.locator("summary").click()
            lines = stack.locator("ol.poolguard-stack li")
            assert lines.first.is_visible()
            assert "build_nightly_report" in lines.first.inner_text()
            # It stays open across the next refreshes.
            updated = page.evaluate("document.getElementById('poolguard-dashboard').dataset.updated || ''")
            page.wait_for_function(
                f"document.getElementById('poolguard-dashboard').dataset.updated !== {updated!r}",
                timeout=REFRESH * 1000 * 10,
            )
            reopened = page.locator("table.pg-checkouts tr", has_text="nightly-report-1").locator("details")
            assert reopened.get_attribute("open") is not None

            page.emulate_media(color_scheme="light")
            page.screenshot(path=str(images / "dashboard-light.png"), full_page=True)
            page.emulate_media(color_scheme="dark")
            dark_bg = page.evaluate("getComputedStyle(document.body).backgroundColor")
            assert dark_bg != "rgb(255, 255, 255)", (
                "the admin's dark mode follows the browser's colour scheme"
            )
            page.screenshot(path=str(images / "dashboard-dark.png"), full_page=True)
            page.emulate_media(color_scheme="light")

            # A narrow screen: the cards stack and nothing overflows the viewport.
            page.set_viewport_size({"width": 390, "height": 844})
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"the page is {overflow}px wider than a phone screen"
            page.screenshot(path=str(images / "dashboard-narrow.png"))

    # Both reports released: the numbers go back down on their own.
    page.set_viewport_size({"width": 1280, "height": 900})
    page.wait_for_function(
        f"""() => document.querySelector('article.pg-card[data-alias="{alias}"] .pg-in-use')
                ?.textContent.trim() === '0'""",
        timeout=REFRESH * 1000 * 10,
    )

    # Signed out meanwhile: the page says so instead of showing the login form inside itself.
    page.context.clear_cookies()
    page.wait_for_function(
        "document.getElementById('poolguard-refresh-state').textContent.includes('signed out')",
        timeout=REFRESH * 1000 * 10,
    )
    assert page.locator("#poolguard-dashboard article.pg-card").count() >= 1


@pytest.fixture
def recorded_leak(superuser: User, make_alias: Any) -> LeakEvent:
    """A LeakEvent row made from a real checkout's acquire stack, as the watchdog records one."""
    alias = make_alias(poolguard={"workload": "reports"})
    with ReportThread(alias, "nightly-report") as thread:
        [checkout] = get_pool(alias).ledger.checkouts()
        stack = stacks.format_stack(checkout.stack)
        fingerprint = stacks.fingerprint(checkout.stack)
        assert checkout.thread is thread
    now = timezone.now()
    event = LeakEvent.objects.create(
        alias=alias,
        workload="reports",
        kind=LeakEvent.Kind.LEAK,
        context="GET /reports/nightly",
        host="web-1",
        pid=4242,
        thread="nightly-report",
        stack="\n".join(stack),
        fingerprint=fingerprint,
        held_seconds=95.2,
        first_seen=now - timedelta(hours=3),
        last_seen=now,
        count=17,
    )
    connections["default"].close()
    return event


def test_leak_event_pages_in_chromium(live_server, recorded_leak, browser_page, images):
    page = browser_page
    page.goto(f"{live_server.url}/admin/login/?next=/admin/django_poolguard/leakevent/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "pw")
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/django_poolguard/leakevent/")
    assert "GET /reports/nightly" in page.locator("#result_list").inner_text()

    page.fill("#searchbar", "build_nightly_report")  # the stack is searchable
    page.press("#searchbar", "Enter")
    page.wait_for_url("**q=build_nightly_report**")
    page.locator("#result_list a", has_text="leak").first.click()
    page.wait_for_url(f"**/leakevent/{recorded_leak.pk}/change/**")

    lines = page.locator("ol.poolguard-stack li")
    assert lines.count() == len(recorded_leak.stack.splitlines())
    assert "build_nightly_report" in lines.first.inner_text()
    font = lines.first.locator("code").evaluate("el => getComputedStyle(el).fontFamily")
    assert "mono" in font.lower(), f"the stack is not in a monospace font: {font}"
    assert page.locator("input[name=_save]").count() == 0  # read-only
    page.set_viewport_size({"width": 1280, "height": 800})
    page.screenshot(path=str(images / "leak-event.png"), full_page=True)


def test_dashboard_without_javascript_is_a_static_page(live_server, make_alias, superuser, tmp_path):
    sync_playwright = _playwright()
    alias = make_alias()
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            java_script_enabled=False,
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.goto(f"{live_server.url}/admin/login/?next=/admin/django_poolguard/pool/")
            page.fill("#id_username", "admin")
            page.fill("#id_password", "pw")
            page.click("input[type=submit]")
            page.wait_for_url("**/admin/django_poolguard/pool/")
            with ReportThread(alias, "static-report"):
                page.reload()
                assert "build_nightly_report" in page.locator("table.pg-checkouts").inner_text()
                # <details> works without scripts; the "refreshes every" note stays hidden.
                page.locator("table.pg-checkouts tr", has_text="static-report").locator("summary").click()
                assert (
                    page.locator("table.pg-checkouts tr", has_text="static-report")
                    .locator("ol li")
                    .first.is_visible()
                )
                assert not page.locator(".pg-js-only").is_visible()
                assert page.locator("a", has_text="Reload").is_visible()
        finally:
            context.close()
