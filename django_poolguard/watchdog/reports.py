"""What the watchdog found about one checkout: the shape its scan logs, signals and stores."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from django_poolguard.escaping import escape_controls


@dataclass(frozen=True)
class LeakReport:
    """What the watchdog found about one checkout; the ``event`` of poolguard's signals."""

    alias: str
    workload: str
    kind: str  # "leak", "hoard" or "reclaimed"
    thread: str
    thread_alive: bool
    context: str
    held: float  # s the connection had been held when reported
    stack: tuple[str, ...]  # acquire stack (where the transaction began, for a hoard), app frames first
    origin: str | None  # the innermost application frame of ``stack``
    fingerprint: str  # same place in the code -> same fingerprint; LeakEvent's de-duplication key
    host: str
    pid: int
    idle: float | None = None  # hoard: s idle inside the transaction
    reason: str | None = None  # reclaimed: "thread_exited", "wrapper_collected" or "connection_dropped"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stack"] = list(self.stack)
        return data

    @property
    def holder(self) -> str:
        """``thread X for GET /path``, or just ``thread X`` outside any request, task or command.

        Escaped for the log line it goes into: paths, task ids and thread names come from outside.
        """
        if self.context == f"thread {self.thread}":
            return escape_controls(self.context)
        return escape_controls(f"thread {self.thread} for {self.context}")

    @property
    def where(self) -> str:
        return self.origin or "no application frame"

    def formatted_stack(self) -> str:
        return "\n".join(f"    {line}" for line in self.stack) or "    (stack capture is off: CAPTURE_STACKS)"


__all__ = ["LeakReport"]
