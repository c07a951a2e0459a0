"""The tables. Secrets are stored only as ciphertext (columns ending in ``_enc``)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from webhook_service.storage.claimable import DELIVERY_DUE_ROWS, INBOX_DUE_ROWS
from webhook_service.storage.columns import UTCDateTime, utcnow


class Base(DeclarativeBase):
    pass


def _where(predicate: str) -> dict[str, Any]:
    """A partial index's predicate, the same on both databases."""
    return {"sqlite_where": text(predicate), "postgresql_where": text(predicate)}


class TenantStatus(enum.StrEnum):
    ACTIVE = "active"
    REAUTH_REQUIRED = "reauth_required"
    DISCONNECTED = "disconnected"


class Tenant(Base):
    """One connected FreshBooks business and the OAuth grant that reaches it.

    ``token_version`` grows by one on every stored rotation: it is what concurrent refreshers
    compare-and-swap on, and the ``refresh_lease_*`` columns make one of them, across processes,
    the only one allowed to spend the single-use refresh token.
    """

    __tablename__ = "tenants"
    __table_args__ = (
        UniqueConstraint("business_id", name="uq_tenants_business_id"),
        Index("ix_tenants_created", "created_at", "id"),  # the console's pages (migration 0011)
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(64))
    business_id: Mapped[int] = mapped_column(BigInteger)
    business_uuid: Mapped[str | None] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(255), default="")
    role: Mapped[str] = mapped_column(String(64), default="")
    identity_id: Mapped[int | None] = mapped_column(BigInteger)
    scopes: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(32), default=TenantStatus.ACTIVE.value)
    status_reason: Mapped[str | None] = mapped_column(Text)
    access_token_enc: Mapped[str] = mapped_column(Text)
    refresh_token_enc: Mapped[str] = mapped_column(Text)
    access_expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    token_version: Mapped[int] = mapped_column(Integer, default=1)
    refresh_lease_owner: Mapped[str | None] = mapped_column(String(64))
    refresh_lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_refreshed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class PendingConnection(Base):
    """A grant obtained in the browser flow whose user still has to pick a business.

    The authorization code is single-use, so the token pair it produced is kept (encrypted) until
    the user chooses; it expires with the OAuth state.
    """

    __tablename__ = "pending_connections"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    token_enc: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class CallbackStatus(enum.StrEnum):
    PENDING_VERIFICATION = "pending_verification"
    VERIFIED = "verified"
    FAILED = "failed"


class Callback(Base):
    """One FreshBooks webhook callback (one event noun of one tenant) and its secret.

    ``endpoint_key`` makes the callback URI unique and unguessable, which is how a delivery (which
    names no callback) finds its callback and verifier. ``verifier_enc`` is set only once FreshBooks
    has accepted the verifier; after a re-verification the previous one stays valid until
    ``previous_verifier_until``. A callback replaced or removed is kept with ``active`` false.
    """

    __tablename__ = "callbacks"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    event: Mapped[str] = mapped_column(String(64))
    endpoint_key: Mapped[str] = mapped_column(String(64), unique=True)
    uri: Mapped[str] = mapped_column(Text)
    freshbooks_callback_id: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(32), default=CallbackStatus.PENDING_VERIFICATION.value)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    verifier_enc: Mapped[str | None] = mapped_column(Text)
    previous_verifier_enc: Mapped[str | None] = mapped_column(Text)
    previous_verifier_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_event_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class InboxStatus(enum.StrEnum):
    PENDING = "pending"
    DUPLICATE = "duplicate"
    PROCESSED = "processed"
    FAILED = "failed"


class InboxEvent(Base):
    """A verified FreshBooks delivery, committed before the 2xx goes out.

    The raw body is kept byte for byte (it is what was signed); the parsed ids are columns so the
    pipeline can work without re-parsing. ``body_hash`` finds exact redeliveries.
    """

    __tablename__ = "inbox_events"
    __table_args__ = (
        Index("ix_inbox_events_dedupe", "callback_id", "body_hash", "received_at"),
        Index("ix_inbox_events_received", "status", "received_at"),  # retention (migration 0007)
        Index(  # a claim walks what is still to process in id order (migration 0010)
            "ix_inbox_events_due", "id", **INBOX_DUE_ROWS
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    callback_id: Mapped[str] = mapped_column(ForeignKey("callbacks.id", ondelete="CASCADE"))
    event_name: Mapped[str] = mapped_column(String(128))
    object_id: Mapped[str | None] = mapped_column(String(64))
    account_id: Mapped[str | None] = mapped_column(String(64))
    business_id: Mapped[str | None] = mapped_column(String(64))
    raw_body: Mapped[str] = mapped_column(Text)
    headers: Mapped[str] = mapped_column(Text)
    body_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=InboxStatus.PENDING.value, index=True)
    duplicate_of: Mapped[int | None] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)


class Lease(Base):
    """A named, expiring claim, so one replica at a time runs a periodic job for a tenant."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    until: Mapped[datetime] = mapped_column(UTCDateTime())


class BackfillJob(Base):
    """A backfill of one tenant an operator asked for (``POST /admin/v1/tenants/{id}/backfill``):
    its progress, written as it goes, so any replica can answer how far it is."""

    __tablename__ = "backfill_jobs"
    __table_args__ = (  # one running job per tenant (migration 0011)
        Index("ux_backfill_jobs_running", "tenant_id", unique=True, **_where("status = 'running'")),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16))
    resources: Mapped[str] = mapped_column(Text)
    """The resources it covers, in order, comma-separated."""
    current_resource: Mapped[str | None] = mapped_column(String(64))
    resources_done: Mapped[int] = mapped_column(Integer, default=0)
    scanned: Mapped[int] = mapped_column(Integer, default=0)
    emitted: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ConsoleSession(Base):
    """A browser signed in to the console: its cookie names this row, so signing out (or an
    operator ending it) ends it everywhere, on every replica, before the cookie expires."""

    __tablename__ = "console_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Subscription(Base):
    """A downstream endpoint and the event types it wants.

    ``secret_enc`` signs every delivery; after a rotation ``previous_secret_enc`` signs beside it
    until ``previous_secret_until``. ``failing_since`` marks the start of an unbroken run of
    failures (any success clears it), which is what auto-disable measures.
    """

    __tablename__ = "subscriptions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    event_types: Mapped[str] = mapped_column(Text)  # JSON list of patterns
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    secret_enc: Mapped[str] = mapped_column(Text)
    previous_secret_enc: Mapped[str | None] = mapped_column(Text)
    previous_secret_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    rate_limit_per_second: Mapped[int | None] = mapped_column(Integer)
    rate_window: Mapped[int | None] = mapped_column(BigInteger)
    rate_window_count: Mapped[int] = mapped_column(Integer, default=0)
    filter: Mapped[str | None] = mapped_column(Text)
    """A payload filter (JSON, :mod:`~webhook_service.contract.filters`); None delivers every chosen type."""
    strict_order: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    """Deliver each object's events one at a time, in sequence (a failing object stalls only itself)."""
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Event(Base):
    """A normalized event. ``payload`` is the exact body sent on every attempt (it is signed)."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_tenant_created", "tenant_id", "created_at"),
        Index("ix_events_created_at", "created_at"),  # retention (migration 0007)
        Index("ix_events_type_created", "type", "created_at"),  # the console's lists by type and origin (0011)
        Index("ix_events_origin_created", "origin", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    """None only for an operational event about something of no tenant (a subscription to all)."""
    type: Mapped[str] = mapped_column(String(128))
    resource: Mapped[str] = mapped_column(String(64))
    object_id: Mapped[str] = mapped_column(String(64))
    origin: Mapped[str] = mapped_column(String(16))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    payload: Mapped[str] = mapped_column(Text)
    inbox_event_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    received_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """When the change reached the service: the webhook's arrival, or when the backfill found it."""


class ObjectVersion(Base):
    """The ledger of object versions already emitted, shared by webhooks and polling.

    One row per (tenant, resource, object, version): whichever path sees a version first emits it,
    the other finds it here and does not. A version is the object's ``updated`` stamp and a digest
    of its content (``normalize/versions.py``), so two states inside one second are two rows.
    ``observed_at`` orders them: a state read by a request sent before another emitted state's
    request is older and is not emitted after it (see ``normalize/emit.py``).
    """

    __tablename__ = "object_versions"
    __table_args__ = (UniqueConstraint("tenant_id", "resource", "object_id", "version", name="uq_object_versions"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    resource: Mapped[str] = mapped_column(String(64))
    object_id: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(128))
    event_id: Mapped[str | None] = mapped_column(String(40))
    origin: Mapped[str] = mapped_column(String(16))
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    observed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    """When the request that read this state from FreshBooks was sent."""


class ObjectSequence(Base):
    """The last sequence number given to an object's events (``data.sequence``).

    Never purged (one small row per object), so a sequence never goes back. ``tenant_id`` is ``""``
    for an operational event of no tenant; it is no foreign key, so a deleted tenant's objects keep
    their counters.
    """

    __tablename__ = "object_sequences"

    tenant_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    resource: Mapped[str] = mapped_column(String(64), primary_key=True)
    object_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    last: Mapped[int] = mapped_column(BigInteger)


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    FAILED = "failed"  # the last attempt failed; another is scheduled
    SUCCEEDED = "succeeded"
    DEAD = "dead"


class Delivery(Base):
    """One event for one subscription: retried on a schedule, leased by the worker sending it."""

    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_due", "status", "next_attempt_at"),
        Index(  # a claim walks what is still to send in next_attempt_at order (migration 0010)
            "ix_deliveries_due_at",
            "next_attempt_at",
            **DELIVERY_DUE_ROWS,
        ),
        Index("ix_deliveries_subscription", "subscription_id", "created_at"),
        Index("ix_deliveries_created", "created_at", "id"),  # the console's list, newest first (migration 0011)
        Index("ix_deliveries_status_created", "status", "created_at", "id"),  # the same by status (0011)
        Index("ix_deliveries_completed", "status", "completed_at"),  # retention (migration 0007)
        Index(  # strict order: is an earlier delivery of this object still due? (migration 0009)
            "ix_deliveries_ordering",
            "subscription_id",
            "ordering_key",
            "sequence",
            **_where("ordering_key IS NOT NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    event_id: Mapped[str] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"), index=True)
    subscription_id: Mapped[str] = mapped_column(ForeignKey("subscriptions.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    schedule_base: Mapped[int] = mapped_column(Integer, default=0)
    """``attempts`` when the current retry schedule started (a replay starts a new one)."""
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ordering_key: Mapped[str | None] = mapped_column(String(200))
    """``tenant/resource/object_id`` of the event, for a strict-order subscription only."""
    sequence: Mapped[int | None] = mapped_column(BigInteger)
    """The event's per-object sequence, for a strict-order subscription only."""


class DeliveryAttempt(Base):
    """One attempt of a delivery; its number is recorded once (a lost lease records nothing)."""

    __tablename__ = "delivery_attempts"
    __table_args__ = (
        UniqueConstraint("delivery_id", "number", name="uq_delivery_attempts_number"),
        Index("ix_delivery_attempts_started", "started_at"),  # the console's recent rates and chart (migration 0011)
        Index(  # the response bodies retention still has to clear (migration 0007)
            "ix_delivery_attempts_body_started",
            "started_at",
            **_where("response_body IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("deliveries.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    response_body: Mapped[str | None] = mapped_column(Text)


class BackfillState(Base):
    """Per tenant and resource: how far polling has covered, and what it found.

    ``watermark`` only moves after every event of a scan is committed, to the moment the scan
    started (less a margin for clock skew): a crash repeats work, it never skips any.
    """

    __tablename__ = "backfill_state"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    resource: Mapped[str] = mapped_column(String(64), primary_key=True)
    watermark: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_run_status: Mapped[str | None] = mapped_column(String(16))
    last_error: Mapped[str | None] = mapped_column(Text)
    last_scanned: Mapped[int] = mapped_column(Integer, default=0)
    last_emitted: Mapped[int] = mapped_column(Integer, default=0)
    recovered_total: Mapped[int] = mapped_column(BigInteger, default=0)
    """Events polling emitted because no webhook had (the gaps it closed)."""
