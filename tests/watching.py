"""Helpers for tests that wait on the watchdog: poll a condition, record poolguard's signals."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from django_poolguard import signals

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, what: str = "the condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class SignalLog:
    """Every poolguard signal sent for one alias, in order, as ``(signal name, kwargs)``."""

    NAMES = ("leak_detected", "leak_resolved", "connection_reclaimed", "pool_alert")

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()  # receivers run on the watchdog thread and on run_once callers
        self._receivers = {name: self._receiver(name) for name in self.NAMES}

    def _receiver(self, name: str) -> Callable[..., None]:
        def receive(sender: str, **kwargs: Any) -> None:
            if sender == self.alias:
                kwargs.pop("signal", None)
                with self._lock:
                    self.sent.append((name, kwargs))

        return receive

    def of(self, name: str, **match: Any) -> list[dict[str, Any]]:
        """The kwargs of every ``name`` signal whose event (or kwargs) match ``match``."""
        with self._lock:
            sent = list(self.sent)
        out = []
        for sent_name, kwargs in sent:
            if sent_name != name:
                continue
            event = kwargs.get("event")
            if all(kwargs.get(k, getattr(event, k, None)) == v for k, v in match.items()):
                out.append(kwargs)
        return out

    def wait(self, name: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        """The first ``name`` signal matching ``match``, waiting for it to be sent."""
        return wait_until(lambda: self.of(name, **match), timeout, f"{name} {match} on {self.alias}")[0]


@contextmanager
def recording(alias: str) -> Iterator[SignalLog]:
    log = SignalLog(alias)
    for name, receiver in log._receivers.items():
        getattr(signals, name).connect(receiver, weak=False)
    try:
        yield log
    finally:
        for name, receiver in log._receivers.items():
            getattr(signals, name).disconnect(receiver)
