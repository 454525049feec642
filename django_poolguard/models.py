"""What poolguard keeps in the database: leak history, published process snapshots, and
the permissions of the admin dashboard."""

from __future__ import annotations

from django.db import models


class LeakEvent(models.Model):
    """A place in the code that held a connection too long (or died holding one).

    One row per (alias, kind, fingerprint): a leaking endpoint hit 10,000 times is one
    row with ``count=10000``.
    """

    class Kind(models.TextChoices):
        LEAK = "leak", "leak"
        HOARD = "hoard", "idle in transaction"
        RECLAIMED = "reclaimed", "reclaimed from a dead holder"

    alias = models.CharField(max_length=100)
    workload = models.CharField(max_length=100)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    context = models.CharField(max_length=500, blank=True)
    host = models.CharField(max_length=255)
    pid = models.IntegerField()
    thread = models.CharField(max_length=200, blank=True)
    stack = models.TextField(blank=True)
    fingerprint = models.CharField(max_length=40)
    held_seconds = models.FloatField(default=0.0, help_text="Longest time held when reported.")
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField(db_index=True)
    count = models.PositiveIntegerField(default=1)
    resolved = models.BooleanField(default=False)

    class Meta:
        ordering = ["-last_seen"]
        constraints = [
            models.UniqueConstraint(
                fields=["alias", "kind", "fingerprint"], name="poolguard_leakevent_unique_place"
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} on {self.alias}: {self.context or self.thread} (seen {self.count} times)"


class ProcessSnapshot(models.Model):
    """The latest snapshot a process published (``PUBLISH="database"``), one row per process."""

    key = models.CharField(max_length=300, unique=True, help_text="host:pid")
    host = models.CharField(max_length=255)
    pid = models.IntegerField()
    role = models.CharField(max_length=20)
    updated_at = models.DateTimeField(db_index=True)
    data = models.JSONField()

    def __str__(self) -> str:
        return self.key


class Pool(models.Model):
    """No table: the admin's "Connection pools" dashboard hangs its permissions here."""

    class Meta:
        managed = False
        default_permissions = ("view",)
        permissions = [("terminate_session", "Can cancel or terminate database sessions")]
        verbose_name = "connection pool"
        verbose_name_plural = "connection pools"

    def __str__(self) -> str:
        # Admin log entries about a database session use an unsaved Pool whose pk is the backend pid.
        return f"database session {self.pk}" if self.pk else "connection pools"


class Lease(models.Model):
    """One process's lease of its workload's fleet budget (``OPTIONS["poolguard"]["fleet_budget"]``).

    Written only by :mod:`django_poolguard.fleet.lease_stores` over the side connection, under an
    advisory lock per budget key; a row past ``expires_at`` (by the server's clock) no longer counts.
    """

    key = models.CharField(max_length=300, help_text="workload@host:port/dbname")
    owner = models.CharField(max_length=300, help_text="host:pid:token")
    lease = models.IntegerField()
    want = models.IntegerField(
        default=0, help_text="What the owner asked for: others below their share give back to it."
    )
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        db_table = "poolguard_lease"
        constraints = [models.UniqueConstraint(fields=["key", "owner"], name="poolguard_lease_unique_owner")]

    def __str__(self) -> str:
        return f"{self.owner}: {self.lease} of {self.key}"
