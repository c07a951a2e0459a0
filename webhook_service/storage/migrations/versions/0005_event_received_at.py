"""events.received_at: when the change reached the service (webhook received, or backfill found it)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21 19:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import webhook_service.storage.columns

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("received_at", webhook_service.storage.columns.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_column("received_at")
