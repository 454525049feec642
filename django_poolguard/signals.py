"""Signals for integrations (Sentry, Slack, paging). All are sent from the watchdog thread.

- ``leak_detected(sender=alias, event=LeakReport)``: a checkout held past ``leak_threshold``
  (``kind="leak"``) or idle in a transaction past ``hoard_threshold`` (``kind="hoard"``).
- ``leak_resolved(sender=alias, event=LeakReport, held=seconds)``: a reported checkout came back.
- ``connection_reclaimed(sender=alias, event=LeakReport, reason=str)``: a dead holder's slot was returned.
- ``pool_alert(sender=alias, kind=str, message=str, state=dict)``: sustained utilization,
  waiting, exhaustion or leaks; rate-limited.
"""

from __future__ import annotations

from django.dispatch import Signal

leak_detected = Signal()
leak_resolved = Signal()
connection_reclaimed = Signal()
pool_alert = Signal()
