"""No secret in any log line; request ids on request logs; SQLite tuned for durability."""

from __future__ import annotations

import asyncio
import json
import logging
import threading

import httpx
import pytest
from conftest import ON_POSTGRES, OWNER_ACCOUNT_ID
from sqlalchemy import text

from webhook_service.core.logs import REDACTED, configure_logging, get_logger
from webhook_service.inbound import registrar
from webhook_service.storage import callbacks as callback_store
from webhook_service.storage import migrate
from webhook_service.storage import tenants as tenant_store
from webhook_service.storage.models import InboxEvent


@pytest.fixture
def json_logs(capsys):
    configure_logging("debug", "json")
    yield lambda: [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    logging.getLogger().handlers[:] = []


async def test_secrets_never_reach_the_logs(json_logs, runtime, simulator, capsys):
    from webhook_service.tenants import onboarding

    refresh = simulator.state.issue_refresh_token()
    tenant = await onboarding.import_refresh_token(runtime, refresh, 439000)
    simulator.state.seed(OWNER_ACCOUNT_ID, "invoice", 2)
    simulator.state.expire_access_tokens()
    [_ async for _ in runtime.freshbooks.iterate(tenant, "invoice")]
    get_logger("test").info("tried", access_token="abc", nested={"client_secret": "def"}, status_code=200)

    async with runtime.db.sessions() as session:
        row = await tenant_store.get(session, tenant.id)
    secrets_in_play = [
        refresh,
        runtime.box.decrypt(row.access_token_enc),
        runtime.box.decrypt(row.refresh_token_enc),
        simulator.state.client_secret,
    ]
    captured = capsys.readouterr()
    output = captured.err + captured.out
    assert "token_refreshed" in output
    for secret in secrets_in_play:
        assert secret not in output
    tried = [json.loads(line) for line in output.splitlines() if '"tried"' in line][0]
    assert tried["access_token"] == REDACTED
    assert tried["nested"] == {"client_secret": REDACTED}
    assert tried["status_code"] == 200


def test_request_logs_carry_a_request_id_and_no_query_string(json_logs, service):
    response = httpx.get(f"{service.base_url}/oauth/freshbooks/callback", params={"code": "SECRETCODE", "state": "x"})
    lines = json_logs()
    requests = [line for line in lines if line["event"] == "http_request"]
    assert requests and requests[-1]["request_id"] == response.headers["x-request-id"]
    assert requests[-1]["path"] == "/oauth/freshbooks/callback"
    assert all("SECRETCODE" not in json.dumps(line) for line in lines)


async def test_an_accepted_webhook_is_one_request_line_that_says_what_it_became(
    json_logs, service, runtime, tenant, simulator
):
    """A webhook is most of the traffic: its request's one line carries the inbox row, the callback,
    the tenant and the FreshBooks event, and nothing else at info is written for that request."""
    await registrar.sync_tenant(runtime, tenant)
    await asyncio.to_thread(service.settle)
    [invoice] = simulator.state.seed(OWNER_ACCOUNT_ID, "invoice", 1)
    async with runtime.db.sessions() as session:
        [callback] = [cb for cb in await callback_store.active_for_tenant(session, tenant.id) if cb.event == "invoice"]
    json_logs()  # what came before

    simulator.state.update_object(OWNER_ACCOUNT_ID, "invoice", invoice["id"], {"notes": "one line"})
    await asyncio.to_thread(service.settle)

    lines = json_logs()
    [line] = [
        line
        for line in lines
        if line["event"] == "http_request" and line["path"] == f"/webhooks/freshbooks/{callback.endpoint_key}"
    ]
    assert line["status"] == 200
    assert line["callback_id"] == callback.id
    assert line["tenant_id"] == tenant.id
    assert line["event_name"] == "invoice.update"
    assert line["object_id"] == str(invoice["id"])
    assert line["duplicate"] is False
    async with runtime.db.sessions() as session:
        row = await session.get(InboxEvent, line["inbox_id"])
    assert row is not None and row.callback_id == callback.id
    said = [other for other in lines if other.get("request_id") == line["request_id"] and other["level"] != "debug"]
    assert said == [line]


@pytest.mark.skipif(ON_POSTGRES, reason="SQLite pragmas")
async def test_sqlite_is_tuned_for_durability(runtime):
    async with runtime.db.engine.connect() as connection:
        pragmas = {
            name: (await connection.execute(text(f"PRAGMA {name}"))).scalar()
            for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
        }
        inline = (await connection.get_raw_connection()).driver_connection
    # No lock is waited for on the event loop's thread (busy_timeout 0 there); a statement that
    # must wait runs again on a worker thread, for up to the configured 15 s.
    assert pragmas == {"journal_mode": "wal", "synchronous": 2, "foreign_keys": 1, "busy_timeout": 0}
    assert inline.lock_wait == 15.0


async def test_migrations_reach_head(runtime):
    assert await migrate.pending_revisions(runtime.db) == []


def test_the_head_the_code_expects_is_the_newest_migration():
    """``migrate.HEAD`` spares every start the scripts' reading; a migration added without moving it
    would leave databases unmigrated."""
    from alembic.script import ScriptDirectory

    assert ScriptDirectory.from_config(migrate.alembic_config("sqlite://")).get_current_head() == migrate.HEAD


async def test_a_database_behind_head_has_its_revisions_pending(tmp_path):
    """The fast answer (the database at ``HEAD``) must not hide a database that is behind."""
    from webhook_service.storage.database import Database

    db = Database(f"sqlite+aiosqlite:///{tmp_path}/behind.db")
    every = [f"{n:04d}" for n in range(int(migrate.HEAD), 0, -1)]
    try:
        assert await migrate.pending_revisions(db) == every  # a new database: nothing applied
        await migrate.upgrade(db, every[1])
        assert await migrate.pending_revisions(db) == [migrate.HEAD]
        await migrate.upgrade(db)
        assert await migrate.pending_revisions(db) == []
    finally:
        await db.dispose()


@pytest.mark.parametrize(
    ("level", "shown"),
    [("debug", ["d", "i", "w"]), ("info", ["i", "w"]), ("warning", ["w"]), ("error", [])],
)
def test_log_level_decides_which_lines_are_written(capsys, level, shown):
    configure_logging(level, "json")
    try:
        log = get_logger("webhook_service.test")
        log.debug("d", n=1)
        log.info("i", n=2)
        log.warning("w", n=3)
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    finally:
        logging.getLogger().handlers[:] = []
    assert [line["event"] for line in lines] == shown
    names = {"d": "debug", "i": "info", "w": "warning"}
    assert all(line["level"] == names[line["event"]] for line in lines)


def test_the_services_lines_and_the_libraries_share_one_file_whole_lines_from_any_thread(tmp_path):
    """The service's own lines skip the standard library's logging but go to the same handler,
    under its lock: whole JSON lines, with the same fields and redaction as a library's lines,
    and none once the handler is gone."""
    path = tmp_path / "service.log"
    configure_logging("info", "json", log_file=str(path))
    root = logging.getLogger()
    handler = root.handlers[0]  # the file's
    try:
        ours, theirs = get_logger("webhook_service.test"), logging.getLogger("uvicorn.error")

        def write(writer: int) -> None:
            for n in range(200):
                ours.info("ours", writer=writer, n=n, access_token="not-for-the-log", nested={"password": "p"})
                theirs.info("theirs %d", n)

        threads = [threading.Thread(target=write, args=(writer,)) for writer in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        root.handlers[:] = []
        ours.warning("after the handler is gone")
    finally:
        handler.close()
        root.handlers[:] = []
    text = path.read_text(encoding="utf-8")
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == 1600 and text.endswith("\n")
    mine = [line for line in lines if line["logger"] == "webhook_service.test"]
    assert len(mine) == 800 and {(line["writer"], line["n"]) for line in mine} == {
        (w, n) for w in range(4) for n in range(200)
    }
    assert all(line["access_token"] == "[redacted]" and line["nested"] == {"password": "[redacted]"} for line in mine)
    assert "not-for-the-log" not in text
    library = [line for line in lines if line["logger"] == "uvicorn.error"]
    assert len(library) == 800 and all(line["event"].startswith("theirs ") for line in library)
    assert all({"level", "timestamp", "event"} <= line.keys() for line in lines)
    assert "after the handler is gone" not in text
