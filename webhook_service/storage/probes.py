"""What the readiness probe asks the database (the write it tries is ``Database.probe_write``)."""

from __future__ import annotations

from sqlalchemy import text

from webhook_service.storage.database import Database


async def ping(db: Database) -> None:
    """One round trip on a connection of the pool (``SELECT 1``); raises if the database does not answer."""
    async with db.engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
