"""Shared fixtures: a FreshBooks simulator on 127.0.0.1 and a service runtime on a fresh database.

The database is a temporary SQLite file, or, when ``TEST_DATABASE_URL`` names a PostgreSQL server
(``postgresql+asyncpg://user@host:port/postgres``), a database created for the test and dropped
after it: the same suite runs on both backends. Either is a copy of one database migrated once per
run (a file copy; ``CREATE DATABASE ... TEMPLATE``), so the migrations run once, not in every test;
the service still runs its migration check on start, and finds the schema at head.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import sqlite3
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import event_contract
import pytest
import structlog
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from webhook_service.app import create_app
from webhook_service.config import Settings
from webhook_service.core.crypto import generate_key
from webhook_service.delivery.worker import DeliveryWorker
from webhook_service.inbound import registrar
from webhook_service.normalize.processor import InboxProcessor
from webhook_service.runtime import Runtime
from webhook_service.sandbox.serving import BackgroundServer, bind_socket
from webhook_service.sandbox.simulator import SimulatorServer, SimulatorState
from webhook_service.sandbox.sink import SinkServer
from webhook_service.storage import migrate
from webhook_service.storage.columns import utcnow
from webhook_service.storage.database import Database
from webhook_service.storage.deliveries import backlog
from webhook_service.storage.models import Tenant
from webhook_service.tenants import onboarding
from webhook_service.web.server import build_config

OWNER_BUSINESS_ID = 439000
OWNER_ACCOUNT_ID = "ABC123"

# The services these tests run in-process log through structlog's default configuration (the CLI's
# own, configure_logging, is not applied here), whose console renderer formats an exception with
# rich and each frame's locals. Reading the locals of frames that SQLAlchemy's greenlets left
# behind crashed a test process once (a segfault inside the traceback walk, under
# `unhandled_error`); plain tracebacks, as the service itself prints them, read no locals.
structlog.configure(
    processors=[
        *structlog.get_config()["processors"][:-1],
        structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback),
    ]
)


@pytest.fixture
def simulator() -> Iterator[SimulatorServer]:
    with SimulatorServer(SimulatorState(seed=7)) as server:
        yield server


TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "")
ON_POSTGRES = TEST_DATABASE_URL.startswith("postgresql")


@pytest.fixture(scope="session")
def migrated_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database migrated to head, once per run: the SQLite file's path, or the PostgreSQL database's name."""
    if not ON_POSTGRES:
        path = tmp_path_factory.mktemp("migrated") / "service.db"
        asyncio.run(_migrate(f"sqlite+aiosqlite:///{path}"))
        yield str(path)
        return
    name = f"test_template_{secrets.token_hex(6)}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        asyncio.run(_migrate(make_url(TEST_DATABASE_URL).set(database=name).render_as_string(hide_password=False)))
        yield name
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _migrate(url: str) -> None:
    db = Database(url)
    try:
        await migrate.upgrade(db)
    finally:
        await db.dispose()


@pytest.fixture
def database_url(tmp_path, migrated_database: str) -> Iterator[str]:
    if not ON_POSTGRES:
        shutil.copyfile(migrated_database, tmp_path / "service.db")  # closed cleanly: no -wal file to copy
        yield f"sqlite+aiosqlite:///{tmp_path}/service.db"
        return
    name = f"test_{secrets.token_hex(6)}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}" TEMPLATE "{migrated_database}"'))
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


@pytest.fixture(autouse=True)
def events_match_the_catalogue(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that had a service database, every event stored in it matches the published
    schema of its type (see tests/event_contract.py); a test without one costs nothing.

    It asks for ``database_url`` first, so everything that writes to the database is torn down
    before the check, and the database is removed only after it.
    """
    if "database_url" not in request.fixturenames or request.node.get_closest_marker(event_contract.MARKER):
        yield
        return
    url: str = request.getfixturevalue("database_url")
    yield
    stored = _stored_events_sqlite(url) if not ON_POSTGRES else asyncio.run(_stored_events_postgres(url))
    event_contract.check(
        {event_id: (kind, event_contract.parsed(payload)) for event_id, kind, payload in stored},
        "stored in the test's database",
    )


def _stored_events_sqlite(url: str) -> list[tuple[str, str, str]]:
    connection = sqlite3.connect(f"file:{make_url(url).database}?mode=ro", uri=True)
    try:
        return connection.execute("SELECT id, type, payload FROM events").fetchall()
    except sqlite3.OperationalError:  # no events table: the test took the schema below it
        return []
    finally:
        connection.close()


async def _stored_events_postgres(url: str) -> list[tuple[str, str, str]]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            if (await connection.execute(text("SELECT to_regclass('events')"))).scalar() is None:
                return []
            return [tuple(row) for row in await connection.execute(text("SELECT id, type, payload FROM events"))]
    finally:
        await engine.dispose()


@pytest.fixture
def service_socket() -> Iterator[socket.socket]:
    """The service's listening socket, bound first so its URL (PUBLIC_BASE_URL) is known."""
    sock = bind_socket("127.0.0.1", 0)
    yield sock
    sock.close()


@pytest.fixture
def settings(database_url: str, simulator: SimulatorServer, service_socket: socket.socket) -> Settings:
    return make_settings(database_url, simulator, service_socket)


def make_settings(
    database_url: str, simulator: SimulatorServer, service_socket: socket.socket, **overrides: object
) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "secret_key": generate_key(),
        "freshbooks_api_base": simulator.base_url,
        "freshbooks_auth_base": simulator.base_url,
        "freshbooks_client_id": simulator.state.client_id,
        "freshbooks_client_secret": simulator.state.client_secret,
        "public_base_url": f"http://127.0.0.1:{service_socket.getsockname()[1]}",
        "callback_sync_interval": 3600,
        "outbound_allowed_cidrs": "127.0.0.0/8 ::1/128",  # subscriber sinks listen on loopback
        "backfill_enabled": False,  # tests run sweeps themselves
        "shutdown_grace_seconds": 1.0,
        "auto_migrate": "always",
        "_env_file": None,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@dataclass
class RunningService:
    """The service app on 127.0.0.1 (its own thread and event loop, like a separate process)."""

    server: BackgroundServer
    simulator: SimulatorServer

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def runtime(self) -> Runtime:
        return self.server.app.state.runtime  # type: ignore[attr-defined, no-any-return]

    def settle(self) -> None:
        """Wait until the simulator has sent everything and the service has done all that is due.

        The service's own loops run too; driving rounds here as well (claims keep the two apart)
        and then waiting until nothing due is left makes "everything due is done" something a test
        can wait for instead of sleeping.
        """
        for _ in range(3):  # a reaction (a PUT) may itself make the simulator send something
            self.simulator.state.flush_deliveries()
            self.server.run_coroutine(self._drain())

    async def _drain(self, deadline_s: float = 30.0) -> None:
        runtime = self.runtime
        deadline = asyncio.get_running_loop().time() + deadline_s
        while True:
            await runtime.tasks.idle()
            while await InboxProcessor(runtime).run_once() + await DeliveryWorker(runtime).run_once():
                await runtime.tasks.idle()
            async with runtime.db.sessions() as session:
                inbox_due, deliveries_due = await backlog(session, utcnow())
            if not inbox_due and not deliveries_due:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(
                    f"still due after {deadline_s:g} s: {inbox_due} inbox, {deliveries_due} deliveries"
                )
            await asyncio.sleep(0.01)  # the service's own loops hold the rest: poll until they finish


@pytest.fixture
def cli_env(settings, simulator):
    return {
        "DATABASE_URL": settings.database_url,
        "SECRET_KEY": settings.secret_key.get_secret_value(),
        "FRESHBOOKS_API_BASE": simulator.base_url,
        "FRESHBOOKS_AUTH_BASE": simulator.base_url,
        "FRESHBOOKS_CLIENT_ID": simulator.state.client_id,
        "FRESHBOOKS_CLIENT_SECRET": simulator.state.client_secret,
        "PUBLIC_BASE_URL": settings.public_base_url,
        "LOG_FORMAT": "json",
        "AUTO_MIGRATE": "always",
    }


@pytest.fixture
def sink(request: pytest.FixtureRequest) -> Iterator[SinkServer]:
    """A subscriber endpoint; every body it received is checked against the catalogue afterwards."""
    with SinkServer() as server:
        yield server
    if not request.node.get_closest_marker(event_contract.MARKER):
        received = server.sink.received
        event_contract.check(
            {f"request {n} to {r.path}": (None, event_contract.parsed(r.body)) for n, r in enumerate(received, 1)},
            "the subscriber sink received",
        )


@pytest.fixture
def service(settings: Settings, service_socket: socket.socket, simulator: SimulatorServer) -> Iterator[RunningService]:
    """The service as ``serve`` runs it: its uvicorn configuration (deadlines, connection cap) too."""
    app = create_app(settings)
    config = build_config(settings, app, lifespan="on", log_level="warning", timeout_graceful_shutdown=2)
    with BackgroundServer(app, sock=service_socket, config=config) as server:
        yield RunningService(server, simulator)


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


@pytest.fixture
async def connected(service: RunningService, runtime: Runtime, tenant: Tenant) -> Tenant:
    """A tenant whose callbacks are created and verified through the real handshake."""
    report = await registrar.sync_tenant(runtime, tenant)
    assert report.error is None
    await asyncio.to_thread(service.settle)
    return tenant


def refresh_requests(state: SimulatorState) -> list[dict]:
    return [r for r in state.token_requests if r["grant_type"] == "refresh_token"]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    """Each phase's report on the test item (``rep_setup``, ``rep_call``): a fixture's teardown can
    tell whether the test failed (the browser tests keep a screenshot then)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
