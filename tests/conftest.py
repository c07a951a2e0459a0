"""Shared fixtures: a FreshBooks simulator on 127.0.0.1 and a service runtime on a fresh database.

The database is a temporary SQLite file, or, when ``TEST_DATABASE_URL`` names a PostgreSQL server
(``postgresql+asyncpg://user@host:port/postgres``), a database created for the test and dropped
after it: the same suite runs on both backends.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from webhook_service import onboarding
from webhook_service.config import Settings
from webhook_service.crypto import generate_key
from webhook_service.runtime import Runtime
from webhook_service.simulator import SimulatorServer, SimulatorState
from webhook_service.storage.models import Tenant

OWNER_BUSINESS_ID = 439000
OWNER_ACCOUNT_ID = "ABC123"


@pytest.fixture
def simulator() -> Iterator[SimulatorServer]:
    with SimulatorServer(SimulatorState(seed=7)) as server:
        yield server


TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "")
ON_POSTGRES = TEST_DATABASE_URL.startswith("postgresql")


@pytest.fixture
def database_url(tmp_path) -> Iterator[str]:
    if not ON_POSTGRES:
        yield f"sqlite+aiosqlite:///{tmp_path}/service.db"
        return
    name = f"test_{secrets.token_hex(6)}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(TEST_DATABASE_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _admin(statement: str) -> None:
    engine = create_async_engine(TEST_DATABASE_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture
def settings(database_url: str, simulator: SimulatorServer) -> Settings:
    return make_settings(database_url, simulator)


def make_settings(database_url: str, simulator: SimulatorServer, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "secret_key": generate_key(),
        "freshbooks_api_base": simulator.base_url,
        "freshbooks_auth_base": simulator.base_url,
        "freshbooks_client_id": simulator.state.client_id,
        "freshbooks_client_secret": simulator.state.client_secret,
        "public_base_url": "http://127.0.0.1:8000",
        "auto_migrate": "always",
        "_env_file": None,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    async with Runtime.open(settings, migrate_schema=True) as rt:
        yield rt


@pytest.fixture
async def tenant(runtime: Runtime, simulator: SimulatorServer) -> Tenant:
    """The simulator's owner business, connected through ``tenants import``."""
    outcome = await onboarding.import_refresh_token(runtime, simulator.state.issue_refresh_token(), OWNER_BUSINESS_ID)
    assert isinstance(outcome, Tenant)
    simulator.state.reset_logs()
    return outcome


def refresh_requests(state: SimulatorState) -> list[dict]:
    return [r for r in state.token_requests if r["grant_type"] == "refresh_token"]
