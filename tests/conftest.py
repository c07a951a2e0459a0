"""Shared fixtures: a FreshBooks simulator on 127.0.0.1 and a service runtime on a temporary SQLite."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

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


@pytest.fixture
def settings(tmp_path, simulator: SimulatorServer) -> Settings:
    return make_settings(tmp_path, simulator)


def make_settings(tmp_path, simulator: SimulatorServer, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": f"sqlite+aiosqlite:///{tmp_path}/service.db",
        "secret_key": generate_key(),
        "freshbooks_api_base": simulator.base_url,
        "freshbooks_auth_base": simulator.base_url,
        "freshbooks_client_id": simulator.state.client_id,
        "freshbooks_client_secret": simulator.state.client_secret,
        "public_base_url": "http://127.0.0.1:8000",
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
    outcome = await onboarding.import_refresh_token(
        runtime, simulator.state.issue_refresh_token(), OWNER_BUSINESS_ID
    )
    assert isinstance(outcome, Tenant)
    simulator.state.reset_logs()
    return outcome


def refresh_requests(state: SimulatorState) -> list[dict]:
    return [r for r in state.token_requests if r["grant_type"] == "refresh_token"]
