"""Re-encrypting every secret at rest under the first ``SECRET_KEY`` key.

Columns ending in ``_enc`` hold ciphertext by convention, so new tables join the rotation without
changes here. Rotation: put the new key first (``SECRET_KEY=new,old``), run
``webhook-service rotate-secret-key``, then drop the old key.
"""

from __future__ import annotations

from sqlalchemy import select, update

from webhook_service.core.crypto import SecretBox
from webhook_service.storage.database import Database
from webhook_service.storage.models import Base


async def reencrypt_all(db: Database, box: SecretBox) -> int:
    """Rewrite every non-empty secret under the current first key; returns how many were."""
    rewritten = 0
    async with db.sessions() as session:
        for table in Base.metadata.sorted_tables:
            columns = [column for column in table.columns if column.name.endswith("_enc")]
            if not columns:
                continue
            primary_key = list(table.primary_key.columns)
            rows = (await session.execute(select(*primary_key, *columns))).all()
            for row in rows:
                key = dict(zip([c.name for c in primary_key], row[: len(primary_key)], strict=True))
                values = {
                    column.name: box.rotate(value)
                    for column, value in zip(columns, row[len(primary_key) :], strict=True)
                    if value
                }
                if not values:
                    continue
                await session.execute(update(table).where(*(c == key[c.name] for c in primary_key)).values(**values))
                rewritten += len(values)
        await session.commit()
    return rewritten
