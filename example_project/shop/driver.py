"""The demo's driver: steady shop traffic, and the incidents replayed one after the other over
HTTP against the running gunicorn, so the admin, ``poolstats`` and ``/metrics`` have something to show."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.utils import timezone

PAUSE = 25.0  # s of ordinary traffic between two incidents, so the pools recover on screen


class Driver(threading.Thread):
    def __init__(self, base: str, stop: threading.Event, out: Any) -> None:
        super().__init__(name="demo-driver", daemon=True)
        self.base, self.stop, self.out = base, stop, out

    def run(self) -> None:
        background = threading.Thread(target=self._steady_traffic, name="demo-traffic", daemon=True)
        background.start()
        incidents: list[tuple[str, str, Callable[[], Counter[int]]]] = [
            ("leak", "a warehouse outage: each notification thread leaks its connection", self._leak),
            ("slow-report", "four Saturday-night reports of 20 s at once", self._slow_report),
            ("spike", "40 clients at once on the N+1 listing", self._spike),
            ("hoard", "a 6 s payment provider called inside transactions", self._hoard),
            ("worker-storm", "a backfill: 8 heavy tasks queued at once", self._worker_storm),
        ]
        while not self.stop.wait(PAUSE):
            for name, what, replay in incidents:
                self.out.write(f"[driver] replaying {name!r}: {what}...")
                since = timezone.now()
                statuses = replay()
                summary = ", ".join(f"{count} x {status}" for status, count in sorted(statuses.items()))
                self.out.write(f"[driver] {name!r} done: {summary or 'tasks queued'}")
                if self.stop.wait(8):  # the watchdogs report within a few MONITOR_INTERVALs
                    return
                for line in self.what_poolguard_recorded(since):
                    self.out.write(f"[driver]   poolguard recorded: {line}")
                if self.stop.wait(PAUSE):
                    return

    def what_poolguard_recorded(self, since: datetime) -> list[str]:
        """The leak and hoard events the processes wrote since ``since`` (what the admin lists)."""
        from django.db import connections

        from django_poolguard.models import LeakEvent

        try:
            events = list(LeakEvent.objects.filter(last_seen__gte=since).order_by("-count")[:3])
        finally:
            connections.close_all()
        lines = []
        for event in events:
            origin = event.stack.strip().splitlines()[0].strip() if event.stack.strip() else "no stack"
            lines.append(
                f"{event.kind} on {event.alias!r} x{event.count}, {event.context or event.thread}, at {origin}"
            )
        return lines or ["nothing (see poolstats --leaks and the logs)"]

    # --- traffic --------------------------------------------------------------------------------

    def request(self, method: str, path: str, timeout: float = 30.0) -> int:
        data = b"" if method == "POST" else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read()
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return 0  # no answer at all (refused or timed out): shown as status 0

    def burst(self, count: int, method: str, path: str, every: float = 0.0) -> Counter[int]:
        statuses: Counter[int] = Counter()
        # Guards statuses: the burst's threads report at once.
        lock = threading.Lock()

        def one() -> None:
            status = self.request(method, path)
            with lock:
                statuses[status] += 1

        threads = [threading.Thread(target=one, daemon=True) for _ in range(count)]
        for thread in threads:
            thread.start()
            if every:
                time.sleep(every)
        for thread in threads:
            thread.join(60)
        return statuses

    def _steady_traffic(self) -> None:
        """A few shoppers: the product list, now and then a checkout or the N+1 listing."""
        tick = 0
        while not self.stop.wait(0.3):
            tick += 1
            self.request("GET", "/products/", timeout=10)
            if tick % 5 == 0:
                self.request("POST", "/checkout/", timeout=10)
            if tick % 11 == 0:
                self.request("GET", "/products/by-category/", timeout=10)

    # --- the incidents --------------------------------------------------------------------------

    def _leak(self) -> Counter[int]:
        return self.burst(6, "POST", "/orders/notify/?fail=1", every=0.3)

    def _slow_report(self) -> Counter[int]:
        return self.burst(4, "GET", "/reports/revenue/?seconds=20")

    def _spike(self) -> Counter[int]:
        return self.burst(40, "GET", "/products/by-category/")

    def _hoard(self) -> Counter[int]:
        return self.burst(8, "POST", "/payments/pay/?delay=6", every=0.1)

    def _worker_storm(self) -> Counter[int]:
        from django.db.models import Max

        from .models import Order
        from .tasks import backfill_order_totals

        last = Order.objects.aggregate(last=Max("id"))["last"] or 0
        for i in range(8):
            backfill_order_totals.delay(max(last - (i + 1) * 50, 0), last - i * 50, 6.0)
        from django.db import connections

        connections.close_all()  # the driver's thread gives its connection back
        return Counter()
