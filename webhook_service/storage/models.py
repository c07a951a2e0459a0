"""The tables. Secrets are stored only as ciphertext (columns ending in ``_enc``)."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import BigInteger, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from webhook_service.storage.columns import UTCDateTime, utcnow


class Base(DeclarativeBase):
    pass


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
    __table_args__ = (UniqueConstraint("business_id", name="uq_tenants_business_id"),)

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
