"""Test-only: a command that keeps its connection while doing slow work (a leak to report)."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand
from django.db import connections


class Command(BaseCommand):
    help = "Query, then keep the connection checked out for --hold seconds before closing it."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--hold", type=float, default=1.5, help="seconds to keep the connection")

    def handle(self, *args: Any, hold: float, **options: Any) -> None:
        self.export_rows()
        time.sleep(hold)  # the slow part (an upload, say) with the connection still checked out
        connections["default"].close()
        time.sleep(0.5)  # let the watchdog notice the return before the process exits

    def export_rows(self) -> None:
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT 1")
