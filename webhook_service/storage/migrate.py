"""Schema migrations with Alembic, run on the service's own async engine.

``serve`` calls :func:`upgrade` on start for SQLite (configurable with ``AUTO_MIGRATE``); PostgreSQL
deployments run ``webhook-service migrate`` once, before the replicas start.

Alembic is imported only when the database is not at :data:`HEAD`: every start, every CLI command
on SQLite and every ``/readyz`` asks whether the schema is current, and importing Alembic and
reading the migration scripts to answer cost about 0.3 s of CPU, a fifth of a CLI command's.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from webhook_service.core.logs import get_logger
from webhook_service.storage.database import Database

if TYPE_CHECKING:
    from alembic.config import Config

log = get_logger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
HEAD = "0011"
"""The newest revision in ``migrations/versions``: the schema this code expects. A new migration
moves it (``tests/test_logging_and_storage.py`` checks it against the scripts)."""


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


async def upgrade(db: Database, revision: str = "head") -> None:
    pending = await pending_revisions(db)
    if not pending:
        return
    from alembic import command

    config = alembic_config(db.url)

    def _upgrade(connection: Connection) -> None:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    async with db.engine.begin() as connection:
        await connection.run_sync(_upgrade)
    log.info("database_migrated", applied=list(reversed(pending)))


async def pending_revisions(db: Database) -> list[str]:
    """Revisions not yet applied; empty when the schema is current."""
    async with db.connect() as connection:  # unreachable: DatabaseUnreachable, naming DATABASE_URL
        applied = await connection.run_sync(_applied)
    if applied == [HEAD]:
        return []
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config(db.url))
    head = script.get_current_head()

    def _current(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with db.connect() as connection:
        current = await connection.run_sync(_current)
    if current == head:
        return []
    return [rev.revision for rev in script.iterate_revisions(head, current)]


def _applied(connection: Connection) -> list[str]:
    """What ``alembic_version`` holds (nothing before the first migration), read without Alembic."""
    if not inspect(connection).has_table("alembic_version"):
        return []
    return list(connection.execute(text("SELECT version_num FROM alembic_version")).scalars())
