"""delivery_attempts: one row per (delivery_id, number)

An attempt number is recorded once per delivery: a worker whose lease was lost records nothing
(its write is fenced), and this constraint is the last line should two records still race. Copies
left by earlier versions (the same attempt recorded twice) are removed first, keeping the first.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 14:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        sa.text(
            "DELETE FROM delivery_attempts WHERE id NOT IN "
            "(SELECT MIN(id) FROM delivery_attempts GROUP BY delivery_id, number)"
        )
    )
    with op.batch_alter_table("delivery_attempts") as batch:
        batch.create_unique_constraint("uq_delivery_attempts_number", ["delivery_id", "number"])


def downgrade() -> None:
    with op.batch_alter_table("delivery_attempts") as batch:
        batch.drop_constraint("uq_delivery_attempts_number", type_="unique")
