"""Per-object sequence numbers: ``data.sequence`` of every event.

One counter row per (tenant, resource, object), advanced by an upsert in the transaction that
commits the events: the row stays locked until that commit, so two transactions writing events of
one object get their numbers in the order they commit, and a consumer that keeps the highest
sequence it has seen per object never goes back to an older state.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy.ext.asyncio import AsyncSession

from webhook_service.core.jsontext import compact
from webhook_service.storage import compiled

ObjectKey = tuple[str, str, str]
"""tenant id (``""`` for none), resource, object id."""


async def advance(session: AsyncSession, counts: Mapping[ObjectKey, int]) -> dict[ObjectKey, int]:
    """Reserve ``counts[key]`` consecutive numbers for each object; returns the first of each.

    One statement for the lot, its rows in one order (two transactions never lock two counters in
    opposite orders), the same SQL for any number of rows, run on the driver (:mod:`.compiled`):
    every group commit that emits runs it, and SQLAlchemy's multi-row upsert, rendered anew for
    each number of rows, cost 170 µs of Python a call on SQLite (a batch at a steady rate carries
    one or two events). The rows come back with their keys, in no promised order.
    """
    if not counts:
        return {}
    keys = sorted(counts)
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        parameters: list[object] = [[key[n] for key in keys] for n in range(3)] + [[counts[key] for key in keys]]
    else:
        parameters = [compact([[*key, counts[key]] for key in keys]).decode("utf-8")]
    found = await compiled.fetch(session, _UPSERT[dialect], parameters)
    lasts = {(tenant_id, resource, object_id): last for tenant_id, resource, object_id, last in found}
    return {key: lasts[key] - counts[key] + 1 for key in keys}


_CONFLICT = (
    "ON CONFLICT (tenant_id, resource, object_id) DO UPDATE SET last = object_sequences.last + excluded.last "
    "RETURNING tenant_id, resource, object_id, last"
)
_UPSERT = {
    # One array per column, inserted in the arrays' order (the locks' order).
    "postgresql": "INSERT INTO object_sequences (tenant_id, resource, object_id, last) SELECT t, r, o, n "
    "FROM unnest($1::varchar[], $2::varchar[], $3::varchar[], $4::bigint[]) WITH ORDINALITY AS v(t, r, o, n, k) "
    f"ORDER BY k {_CONFLICT}",
    # One JSON array of rows, read by json_each (as storage.lists); "WHERE true" keeps the upsert's
    # ON from being read as a join's.
    "sqlite": "INSERT INTO object_sequences (tenant_id, resource, object_id, last) "
    "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'), "
    "json_extract(value, '$[3]') FROM json_each(?) WHERE true "
    f"{_CONFLICT}",
}
