"""tenants and pending connections

Revision ID: 0001
Revises:
Create Date: 2026-11-21 17:10:10.375618
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import webhook_service.storage.columns

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pending_connections",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("token_enc", sa.Text(), nullable=False),
        sa.Column("created_at", webhook_service.storage.columns.UTCDateTime(), nullable=False),
        sa.Column("expires_at", webhook_service.storage.columns.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("business_id", sa.BigInteger(), nullable=False),
        sa.Column("business_uuid", sa.String(length=64), nullable=True),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("role", sa.String(length=64), nullable=False),
        sa.Column("identity_id", sa.BigInteger(), nullable=True),
        sa.Column("scopes", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("access_token_enc", sa.Text(), nullable=False),
        sa.Column("refresh_token_enc", sa.Text(), nullable=False),
        sa.Column("access_expires_at", webhook_service.storage.columns.UTCDateTime(), nullable=False),
        sa.Column("token_version", sa.Integer(), nullable=False),
        sa.Column("refresh_lease_owner", sa.String(length=64), nullable=True),
        sa.Column("refresh_lease_until", webhook_service.storage.columns.UTCDateTime(), nullable=True),
        sa.Column("last_refreshed_at", webhook_service.storage.columns.UTCDateTime(), nullable=True),
        sa.Column("created_at", webhook_service.storage.columns.UTCDateTime(), nullable=False),
        sa.Column("updated_at", webhook_service.storage.columns.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("business_id", name="uq_tenants_business_id"),
    )


def downgrade() -> None:
    op.drop_table("tenants")
    op.drop_table("pending_connections")
