"""backfill state

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21 18:09:02.560373
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import webhook_service.storage.columns

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "backfill_state",
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("resource", sa.String(length=64), nullable=False),
        sa.Column("watermark", webhook_service.storage.columns.UTCDateTime(), nullable=True),
        sa.Column("last_run_at", webhook_service.storage.columns.UTCDateTime(), nullable=True),
        sa.Column("last_run_status", sa.String(length=16), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_scanned", sa.Integer(), nullable=False),
        sa.Column("last_emitted", sa.Integer(), nullable=False),
        sa.Column("recovered_total", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("tenant_id", "resource"),
    )


def downgrade() -> None:
    op.drop_table("backfill_state")
