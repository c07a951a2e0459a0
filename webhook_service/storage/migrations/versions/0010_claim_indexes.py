"""partial indexes a claim walks in its own order, so a claim costs what it takes, not the backlog

- ``ix_inbox_events_due``: inbox rows still to process (pending, or a duplicate awaiting its
  recheck), by id.
- ``ix_deliveries_due_at``: deliveries still to send, by ``next_attempt_at``.

Before, a claim read every due row through a status index and sorted them to take the first few: a
claim of one delivery with 3,000 waiting cost 3 ms of CPU. The predicates are the models' (see
``storage/models.py``); on SQLite they test ``+status``, which keeps the planner off the status
indexes for the claims.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 11:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# As storage/claimable.py states them; written out here so this migration stays what it was.
_INBOX = "status = 'pending' OR status = 'duplicate' AND processed_at IS NULL AND next_attempt_at IS NOT NULL"
_DELIVERIES = "status IN ('pending', 'failed')"


def _index(name: str, table: str, column: str, predicate: str) -> None:
    # on SQLite, +status: the planner may not look rows up by a status index for these tests
    op.create_index(
        name,
        table,
        [column],
        sqlite_where=sa.text(predicate.replace("status", "+status")),
        postgresql_where=sa.text(predicate),
    )


def upgrade() -> None:
    _index("ix_inbox_events_due", "inbox_events", "id", _INBOX)
    _index("ix_deliveries_due_at", "deliveries", "next_attempt_at", _DELIVERIES)


def downgrade() -> None:
    op.drop_index("ix_deliveries_due_at", table_name="deliveries")
    op.drop_index("ix_inbox_events_due", table_name="inbox_events")
