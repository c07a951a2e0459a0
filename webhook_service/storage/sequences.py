"""Per-object sequence numbers: ``data.sequence`` of every event.

One counter row per (tenant, resource, object), advanced by an upsert in the transaction that
commits the events: the row stays locked until that commit, so two transactions writing events of
one object get their numbers in the order they commit, and a consumer that keeps the highest
sequence it has seen per object never goes back to an older state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from webhook_service.storage.models import ObjectSequence

ObjectKey = tuple[str, str, str]
"""tenant id (``""`` for none), resource, object id."""


async def advance(session: AsyncSession, counts: Mapping[ObjectKey, int]) -> dict[ObjectKey, int]:
    """Reserve ``counts[key]`` consecutive numbers for each object; returns the first of each.

    One statement for the lot (an executemany that SQLAlchemy sends as one multi-row upsert), its
    rows in one order (two transactions never lock two counters in opposite orders). The rows come
    back with their keys: asking for them in parameter order instead makes SQLAlchemy send the
    upsert one row at a time (the table has no sentinel column to sort them by).
    """
    if not counts:
        return {}
    keys = sorted(counts)
    rows: list[dict[str, Any]] = [
        {"tenant_id": tenant_id, "resource": resource, "object_id": object_id, "last": counts[key]}
        for key in keys
        for tenant_id, resource, object_id in (key,)
    ]
    result = await session.execute(_UPSERT[session.get_bind().dialect.name], rows)
    lasts = {(tenant_id, resource, object_id): last for tenant_id, resource, object_id, last in result.all()}
    return {key: lasts[key] - counts[key] + 1 for key in keys}


def _upsert(dialect: Any) -> Any:
    """Built once per dialect, so SQLAlchemy compiles it once (a statement with the rows in its
    VALUES would be compiled anew on every call)."""
    table = ObjectSequence.__table__
    statement = dialect.insert(table)
    return statement.on_conflict_do_update(
        index_elements=["tenant_id", "resource", "object_id"],
        set_={"last": table.c.last + statement.excluded.last},
    ).returning(table.c.tenant_id, table.c.resource, table.c.object_id, table.c.last)


_UPSERT = {"postgresql": _upsert(postgresql), "sqlite": _upsert(sqlite)}
