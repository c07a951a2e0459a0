"""object_versions: a version is the updated stamp plus a digest of the content; observed_at

Before, a version was the ``updated`` stamp and ``vis_state``: two changes inside one second were
one version, and the second never reached a subscriber. Each ledger row is rewritten from the
object its event carried (``events.payload``), so what was already emitted stays known and the
first sweep after the upgrade emits only objects whose current state differs from the one last
emitted (states the old scheme left stale among them). A row whose event is gone keeps its old
value, which no new version equals: that object is emitted once more when next seen.

``observed_at`` (when the request that read the state was sent) orders states that share a stamp;
existing rows take their ``seen_at``, a little later than their read, which only ever errs
towards holding back an older state.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 12:00:00
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from alembic import op

import webhook_service.storage.columns

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

BATCH = 1000

_ledger = sa.table(
    "object_versions",
    sa.column("id", sa.BigInteger),
    sa.column("tenant_id", sa.String),
    sa.column("resource", sa.String),
    sa.column("object_id", sa.String),
    sa.column("version", sa.String),
    sa.column("event_id", sa.String),
)
_events = sa.table("events", sa.column("id", sa.String), sa.column("payload", sa.Text))


def upgrade() -> None:
    from webhook_service.normalize.versions import content_version

    with op.batch_alter_table("object_versions") as batch:
        batch.add_column(sa.Column("observed_at", webhook_service.storage.columns.UTCDateTime(), nullable=True))
    op.execute("UPDATE object_versions SET observed_at = seen_at")
    _rewrite(content_version, dedupe=False)  # distinct old versions give distinct new ones


def downgrade() -> None:
    """Back to stamp and ``vis_state``: states that shared a second become one again (the later
    rows are dropped, as the old scheme would never have written them). Remembers every row's
    version while it runs: memory grows with the ledger."""
    from webhook_service.normalize.versions import stamp_version

    _rewrite(stamp_version, dedupe=True)
    with op.batch_alter_table("object_versions") as batch:
        batch.drop_column("observed_at")


def _rewrite(scheme: Callable[[Any, Mapping[str, Any] | None], str], *, dedupe: bool) -> None:
    """Each ledger row's version recomputed by ``scheme`` from the object its event carried, in
    batches of ``BATCH`` rows (one query and one executemany each)."""
    from webhook_service.freshbooks.catalogue import CATALOGUE

    bind = op.get_bind()
    kept: set[tuple[str, str, str, str]] = set()  # versions already written, to drop collisions
    last = 0
    while True:
        rows = bind.execute(
            sa.select(
                _ledger.c.id,
                _ledger.c.tenant_id,
                _ledger.c.resource,
                _ledger.c.object_id,
                _ledger.c.version,
                _events.c.payload,
            )
            .select_from(_ledger.outerjoin(_events, _events.c.id == _ledger.c.event_id))
            .where(_ledger.c.id > last)
            .order_by(_ledger.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        changes: list[dict[str, Any]] = []
        dropped: list[dict[str, Any]] = []
        for row_id, tenant_id, resource_name, object_id, version, payload in rows:
            last = row_id
            resource = CATALOGUE.get(resource_name)
            obj = _emitted_object(payload)
            new = scheme(resource, obj) if resource is not None and obj is not None else version
            if dedupe:
                key = (tenant_id, resource_name, object_id, new)
                if key in kept:
                    dropped.append({"row_id": row_id})
                    continue
                kept.add(key)
            if new != version:
                changes.append({"row_id": row_id, "new_version": new})
        if dropped:
            bind.execute(_ledger.delete().where(_ledger.c.id == sa.bindparam("row_id")), dropped)
        if changes:
            bind.execute(
                _ledger.update()
                .where(_ledger.c.id == sa.bindparam("row_id"))
                .values(version=sa.bindparam("new_version")),
                changes,
            )


def _emitted_object(payload: str | None) -> dict[str, Any] | None:
    """``data.object`` of an event's payload; None when the event or its object is gone."""
    if payload is None:
        return None
    try:
        obj = (json.loads(payload).get("data") or {}).get("object")
    except (ValueError, AttributeError):
        return None
    return obj if isinstance(obj, dict) else None
