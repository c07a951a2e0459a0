"""No log line carries a webhook body, a signature, a statement's parameters or a frame's locals;
``LOG_LEVEL=debug`` shows the service's work and nothing more of anyone's secrets."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sqlite3

import httpx
import pytest
from conftest import OWNER_ACCOUNT_ID
from sqlalchemy import exc

from webhook_service.backfill import sweep
from webhook_service.core.logs import configure_logging, get_logger
from webhook_service.sandbox.simulator import signing
from webhook_service.storage import callbacks as callback_store
from webhook_service.storage import inbox
from webhook_service.storage import tenants as tenant_store

SIGNATURE_HEADER = "X-FreshBooks-Hmac-SHA256"


@pytest.fixture
def captured(capsys):
    """Configure logging (debug, JSON); calling the result returns everything written since."""
    configure_logging("debug", "json")
    yield lambda: "".join(capsys.readouterr())
    logging.getLogger().handlers[:] = []


def _lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


async def _invoice_callback(runtime, tenant_id):
    async with runtime.db.sessions() as session:
        return {cb.event: cb for cb in await callback_store.active_for_tenant(session, tenant_id)}["invoice"]


def _post_signed(service, simulator, callback, marker: str) -> tuple[httpx.Response, bytes, str]:
    message = {
        "name": "invoice.update",
        "object_id": "100001",
        "account_id": OWNER_ACCOUNT_ID,
        "business_id": "439000",
        "note": marker,  # signed like the rest: only this body carries it
    }
    body = signing.encode(message)
    signature = signing.sign(simulator.state.callback_verifier(callback.freshbooks_callback_id), message)
    url = service.base_url + "/webhooks/freshbooks/" + callback.endpoint_key
    headers = {"Content-Type": "application/x-www-form-urlencoded", SIGNATURE_HEADER: signature}
    return httpx.post(url, content=body, headers=headers), body, signature


@pytest.mark.parametrize(
    ("error_type", "driver_message"),
    [
        (exc.OperationalError, "disk I/O error"),  # the database failing: the service may answer 503
        (exc.ProgrammingError, "no such column: raw_body"),  # a bug: 500, with its traceback in the log
    ],
)
async def test_a_database_error_on_the_inbound_path_logs_no_body_signature_or_parameters(
    captured, connected, service, runtime, simulator, monkeypatch, error_type, driver_message
):
    callback = await _invoice_callback(runtime, connected.id)
    marker = f"body-{secrets.token_hex(8)}"

    async def failing_insert(session, arrivals, **kwargs):
        # What SQLAlchemy raises for a failed INSERT when hide_parameters is off: the values, the
        # body and the headers (with the signature) among them, are in the error's text.
        raise error_type(
            "INSERT INTO inbox_events (raw_body, headers) VALUES (?, ?)",
            [(arrival.raw_body.decode(), json.dumps(arrival.headers)) for arrival in arrivals],
            sqlite3.OperationalError(driver_message),
        )

    monkeypatch.setattr(inbox, "record_many", failing_insert)
    captured()  # drop what connecting logged
    response, body, signature = await asyncio.to_thread(_post_signed, service, simulator, callback, marker)
    output = captured()

    assert response.status_code >= 500
    assert marker not in output and body.decode() not in output
    assert signature not in output
    assert "parameters:" not in output
    if response.status_code == 500:  # the traceback was rendered, and rendered clean
        assert "Traceback" in output and "INSERT INTO inbox_events" in output
        assert "[SQL parameters hidden due to hide_parameters=True]" in output


async def test_debug_logs_follow_the_work_without_secrets(captured, connected, service, runtime, simulator):
    [invoice] = simulator.state.seed(OWNER_ACCOUNT_ID, "invoice", 1)
    simulator.state.update_object(OWNER_ACCOUNT_ID, "invoice", invoice["id"], {"notes": "changed"})
    await asyncio.to_thread(service.settle)
    service.server.run_coroutine(sweep.backfill_tenant(service.runtime, connected, resources=["invoice"]))
    output = captured()
    lines = _lines(output)
    debug = [line for line in lines if line["level"] == "debug"]

    requests = [line for line in debug if line["event"] == "freshbooks_request"]
    fetched = [line for line in requests if line["path"].endswith(f"/invoices/invoices/{invoice['id']}")]
    assert fetched, "no debug line for the processor's FreshBooks GET"
    assert {k: fetched[0][k] for k in ("method", "status", "attempt")} == {"method": "GET", "status": 200, "attempt": 1}
    assert fetched[0]["duration_ms"] >= 0
    assert all("?" not in line["path"] for line in requests)  # no query string (include[], filters)
    assert any(line["event"] == "inbox_flushed" and line["events"] >= 1 for line in debug)
    pages = [line for line in debug if line["event"] == "backfill_page"]
    assert pages and pages[0]["resource"] == "invoice" and pages[0]["rows"] >= 1
    # Third-party libraries stay at their levels: no SQL, no aiosqlite calls, no request URLs.
    assert {line["logger"] for line in debug if not line["logger"].startswith("webhook_service")} == set()

    async with runtime.db.sessions() as session:
        tenant = await tenant_store.get(session, connected.id)
    delivery = next(d for d in simulator.state.deliveries if d["kind"] == "event")
    callback = await _invoice_callback(runtime, connected.id)
    for secret in (
        runtime.box.decrypt(tenant.access_token_enc),
        runtime.box.decrypt(tenant.refresh_token_enc),
        simulator.state.callback_verifier(callback.freshbooks_callback_id),
        delivery["signature"],
        delivery["body"],
    ):
        assert secret not in output


def _failing_with_a_secret_in_scope() -> None:
    access_token = "local-" + "secret-value"  # a frame's local: must never be rendered
    statement = "UPDATE tenants SET access_token_enc = ?"
    raise exc.OperationalError(statement, (access_token,), sqlite3.OperationalError("database is locked"))


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_tracebacks_show_neither_locals_nor_statement_parameters(capsys, fmt):
    configure_logging("info", fmt)
    try:
        try:
            _failing_with_a_secret_in_scope()
        except exc.OperationalError as error:
            get_logger("webhook_service.test").exception("it_failed")
            logging.getLogger("uvicorn.error").error("Exception in ASGI application", exc_info=error)
    finally:
        output = "".join(capsys.readouterr())
        logging.getLogger().handlers[:] = []
    assert output.count("Traceback (most recent call last)") == 2  # ours and a foreign logger's
    assert "_failing_with_a_secret_in_scope" in output and "UPDATE tenants" in output
    assert "local-secret-value" not in output  # rich's locals panel would show it
    assert "parameters:" not in output
