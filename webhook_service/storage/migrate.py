"""Schema migrations with Alembic, run on the service's own async engine.

``serve`` calls :func:`upgrade` on start for SQLite (configurable with ``AUTO_MIGRATE``); PostgreSQL
deployments run ``webhook-service migrate`` once, before the replicas start.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from webhook_service.core.logs import get_logger
from webhook_service.storage.database import Database

log = get_logger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


async def upgrade(db: Database, revision: str = "head") -> None:
    pending = await pending_revisions(db)
    if not pending:
        return
    config = alembic_config(db.url)

    def _upgrade(connection: Connection) -> None:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    async with db.engine.begin() as connection:
        await connection.run_sync(_upgrade)
    log.info("database_migrated", applied=list(reversed(pending)))


async def pending_revisions(db: Database) -> list[str]:
    """Revisions not yet applied; empty when the schema is current."""
    script = ScriptDirectory.from_config(alembic_config(db.url))
    head = script.get_current_head()

    def _current(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with db.connect() as connection:  # unreachable: DatabaseUnreachable, naming DATABASE_URL
        current = await connection.run_sync(_current)
    if current == head:
        return []
    return [rev.revision for rev in script.iterate_revisions(head, current)]
