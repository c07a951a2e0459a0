"""the event contract: operational events, payload filters, per-object sequences, strict order

- ``events.tenant_id`` may be null: an operational event about a subscription that serves every
  tenant (``subscription.disabled``) belongs to none. On SQLite this copies the events table once.
- ``subscriptions.filter`` (a JSON payload filter, null for none) and ``subscriptions.strict_order``.
- ``object_sequences``: the last sequence number given to each (tenant, resource, object); kept for
  good (one small row per object), so a sequence never goes back when events are purged.
- ``deliveries.ordering_key`` and ``deliveries.sequence``, set only for a strict-order
  subscription's deliveries, and the partial index a claim checks "is an earlier one still due?" by.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 23:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_ORDERED = sa.text("ordering_key IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.alter_column("tenant_id", existing_type=sa.String(32), nullable=True)
    with op.batch_alter_table("subscriptions") as batch:
        batch.add_column(sa.Column("filter", sa.Text(), nullable=True))
        batch.add_column(sa.Column("strict_order", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("ordering_key", sa.String(200), nullable=True))
        batch.add_column(sa.Column("sequence", sa.BigInteger(), nullable=True))
    op.create_index(
        "ix_deliveries_ordering",
        "deliveries",
        ["subscription_id", "ordering_key", "sequence"],
        sqlite_where=_ORDERED,
        postgresql_where=_ORDERED,
    )
    op.create_table(
        "object_sequences",
        sa.Column("tenant_id", sa.String(32), nullable=False),
        sa.Column("resource", sa.String(64), nullable=False),
        sa.Column("object_id", sa.String(64), nullable=False),
        sa.Column("last", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "resource", "object_id"),
    )


def downgrade() -> None:
    op.drop_table("object_sequences")
    op.drop_index("ix_deliveries_ordering", table_name="deliveries")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("sequence")
        batch.drop_column("ordering_key")
    with op.batch_alter_table("subscriptions") as batch:
        batch.drop_column("strict_order")
        batch.drop_column("filter")
    op.execute(sa.text("DELETE FROM events WHERE tenant_id IS NULL"))
    with op.batch_alter_table("events") as batch:
        batch.alter_column("tenant_id", existing_type=sa.String(32), nullable=False)
