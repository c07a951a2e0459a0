"""the console: its sessions (``console_sessions``, so signing out ends a session everywhere), the
backfill jobs operators start (``backfill_jobs``, their progress readable from any replica), and
its reads: delivery attempts by start time (success rates and the chart read the recent past),
tenants in creation order, deliveries newest first (all, and by status), events by type and by
origin: every list page reads its own rows through an index, with a million of them

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 11:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from webhook_service.storage.columns import UTCDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_sessions",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("ended_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_console_sessions_expires_at", "console_sessions", ["expires_at"])
    op.create_table(
        "backfill_jobs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("tenant_id", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("resources", sa.Text(), nullable=False),
        sa.Column("current_resource", sa.String(64), nullable=True),
        sa.Column("resources_done", sa.Integer(), nullable=False),
        sa.Column("scanned", sa.Integer(), nullable=False),
        sa.Column("emitted", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_backfill_jobs_tenant_id", "backfill_jobs", ["tenant_id"])
    running = sa.text("status = 'running'")  # one running job per tenant
    op.create_index(
        "ux_backfill_jobs_running",
        "backfill_jobs",
        ["tenant_id"],
        unique=True,
        sqlite_where=running,
        postgresql_where=running,
    )
    op.create_index("ix_delivery_attempts_started", "delivery_attempts", ["started_at"])
    op.create_index("ix_tenants_created", "tenants", ["created_at", "id"])
    op.create_index("ix_deliveries_created", "deliveries", ["created_at", "id"])
    op.create_index("ix_deliveries_status_created", "deliveries", ["status", "created_at", "id"])
    op.create_index("ix_events_type_created", "events", ["type", "created_at"])
    op.create_index("ix_events_origin_created", "events", ["origin", "created_at"])


def downgrade() -> None:
    op.drop_table("backfill_jobs")
    op.drop_table("console_sessions")
    op.drop_index("ix_events_origin_created", table_name="events")
    op.drop_index("ix_events_type_created", table_name="events")
    op.drop_index("ix_deliveries_status_created", table_name="deliveries")
    op.drop_index("ix_deliveries_created", table_name="deliveries")
    op.drop_index("ix_tenants_created", table_name="tenants")
    op.drop_index("ix_delivery_attempts_started", table_name="delivery_attempts")
