"""callbacks, inbox and leases

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 17:22:50.952522
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import webhook_service.storage.columns

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("until", webhook_service.storage.columns.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "callbacks",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("endpoint_key", sa.String(length=64), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("freshbooks_callback_id", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("verifier_enc", sa.Text(), nullable=True),
        sa.Column("previous_verifier_enc", sa.Text(), nullable=True),
        sa.Column("previous_verifier_until", webhook_service.storage.columns.UTCDateTime(), nullable=True),
        sa.Column("verified_at", webhook_service.storage.columns.UTCDateTime(), nullable=True),
        sa.Column("last_event_at", webhook_service.storage.columns.UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", webhook_service.storage.columns.UTCDateTime(), nullable=False),
        sa.Column("updated_at", webhook_service.storage.columns.UTCDateTime(), nullable=False),
        sa.Column("retired_at", webhook_service.storage.columns.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("endpoint_key"),
    )
    with op.batch_alter_table("callbacks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_callbacks_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "inbox_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("callback_id", sa.String(length=32), nullable=False),
        sa.Column("event_name", sa.String(length=128), nullable=False),
        sa.Column("object_id", sa.String(length=64), nullable=True),
        sa.Column("account_id", sa.String(length=64), nullable=True),
        sa.Column("business_id", sa.String(length=64), nullable=True),
        sa.Column("raw_body", sa.Text(), nullable=False),
        sa.Column("headers", sa.Text(), nullable=False),
        sa.Column("body_hash", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("duplicate_of", sa.BigInteger(), nullable=True),
        sa.Column("received_at", webhook_service.storage.columns.UTCDateTime(), nullable=False),
        sa.Column("processed_at", webhook_service.storage.columns.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["callback_id"], ["callbacks.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("inbox_events", schema=None) as batch_op:
        batch_op.create_index("ix_inbox_events_dedupe", ["callback_id", "body_hash", "received_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_inbox_events_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_inbox_events_tenant_id"), ["tenant_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("inbox_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_inbox_events_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_inbox_events_status"))
        batch_op.drop_index("ix_inbox_events_dedupe")

    op.drop_table("inbox_events")
    with op.batch_alter_table("callbacks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_callbacks_tenant_id"))

    op.drop_table("callbacks")
    op.drop_table("leases")
