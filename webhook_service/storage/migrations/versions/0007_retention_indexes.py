"""retention: the indexes the purge walks (``storage/retention.py``)

Each purge statement finds its rows through an index that holds only, or first, the rows it may
delete, so a batch reads about as many rows as it deletes however large the table is:

- ``deliveries (status, completed_at)``: succeeded and dead deliveries, oldest first (and, through
  ``delivery_attempts.delivery_id``, their attempts);
- ``inbox_events (status, received_at)``: processed, failed and duplicate rows, oldest first;
- ``events (created_at)``: events past the window (whether a delivery still holds one is a probe
  of ``deliveries.event_id``);
- ``delivery_attempts (started_at) WHERE response_body IS NOT NULL``: the bodies still to clear; a
  cleared row leaves the index, so it is never read again.

The ledger (``object_versions``) needs none: it is walked by primary key, and an object's other
rows are found through ``uq_object_versions``.

On a large PostgreSQL database ``CREATE INDEX`` blocks writes to its table while it builds. To
avoid that, create the indexes by hand first with ``CREATE INDEX CONCURRENTLY`` and the same names
and definitions; this migration then skips them (``IF NOT EXISTS``).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_BODY_KEPT = sa.text("response_body IS NOT NULL")


def upgrade() -> None:
    op.create_index("ix_deliveries_completed", "deliveries", ["status", "completed_at"], if_not_exists=True)
    op.create_index("ix_inbox_events_received", "inbox_events", ["status", "received_at"], if_not_exists=True)
    op.create_index("ix_events_created_at", "events", ["created_at"], if_not_exists=True)
    op.create_index(
        "ix_delivery_attempts_body_started",
        "delivery_attempts",
        ["started_at"],
        sqlite_where=_BODY_KEPT,
        postgresql_where=_BODY_KEPT,
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_index("ix_delivery_attempts_body_started", table_name="delivery_attempts", if_exists=True)
    op.drop_index("ix_events_created_at", table_name="events", if_exists=True)
    op.drop_index("ix_inbox_events_received", table_name="inbox_events", if_exists=True)
    op.drop_index("ix_deliveries_completed", table_name="deliveries", if_exists=True)
