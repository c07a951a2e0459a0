"""The polling backfill: what webhooks missed reaches subscribers exactly once."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from conftest import OWNER_ACCOUNT_ID
from sqlalchemy import func, select
from standardwebhooks.webhooks import Webhook

from webhook_service.app import create_app
from webhook_service.backfill import sweep
from webhook_service.backfill.schedule import sweep_due_tenants
from webhook_service.delivery import subscriptions
from webhook_service.freshbooks.timestamps import EASTERN
from webhook_service.inbound import registrar
from webhook_service.normalize import emit
from webhook_service.sandbox.serving import BackgroundServer, bind_socket
from webhook_service.storage.models import BackfillState, Event, ObjectVersion


async def _count(runtime, model) -> int:
    async with runtime.db.sessions() as session:
        return (await session.execute(select(func.count()).select_from(model))).scalar_one()


def _payloads(sink, secret):
    return [Webhook(secret).verify(r.body, r.headers) for r in sink.sink.received]


async def test_one_sweep_recovers_dropped_and_downtime_changes_exactly_once(
    service, settings, runtime, tenant, simulator, sink
):
    state = simulator.state
    invoice_ids = [inv["id"] for inv in state.seed(OWNER_ACCOUNT_ID, "invoice", 2500)]
    client_ids = [c["id"] for c in state.seed(OWNER_ACCOUNT_ID, "client", 300)]
    await registrar.sync_tenant(runtime, tenant)
    await asyncio.to_thread(service.settle)
    created = await subscriptions.create(runtime, {"url": f"{sink.base_url}/all"})
    since = datetime.now(UTC) - timedelta(seconds=1)
    changed: set[tuple[str, str]] = set()

    state.delivery_drop_rate = 0.3  # FreshBooks loses 30% of the webhooks
    for object_id in invoice_ids[:150]:
        state.update_object(OWNER_ACCOUNT_ID, "invoice", object_id, {"notes": "changed while up"})
        changed.add(("invoice", str(object_id)))
    for object_id in client_ids[:40]:
        state.update_object(OWNER_ACCOUNT_ID, "client", object_id, {"organization": "Changed Ltd"})
        changed.add(("client", str(object_id)))
    await asyncio.to_thread(service.settle)
    delivered_live = len(sink.sink.received)
    assert 0 < delivered_live < len(changed)  # some were dropped

    port = service.server.port
    service.server.stop()  # the service is down for part of the stream
    changed_while_up = set(changed)
    for object_id in invoice_ids[150:190]:
        state.update_object(OWNER_ACCOUNT_ID, "invoice", object_id, {"notes": "changed while down"})
        changed.add(("invoice", str(object_id)))
    for object_id in client_ids[40:50]:
        state.update_object(OWNER_ACCOUNT_ID, "client", object_id, {"organization": "Down Ltd"})
        changed.add(("client", str(object_id)))
    state.flush_deliveries()
    changed_while_down = changed - changed_while_up
    assert {d["status"] for d in state.deliveries[-50:] if not d["dropped"]} == {None}  # refused while down

    service.server = BackgroundServer(create_app(settings), sock=bind_socket("127.0.0.1", port), lifespan="on").start()
    try:
        report = await sweep.backfill_tenant(runtime, service_tenant := tenant, since=since)
        assert not report.failed
        await asyncio.to_thread(service.settle)
        payloads = _payloads(sink, created.secret)
        seen = [(p["data"]["resource"], p["data"]["object_id"]) for p in payloads]
        assert len(seen) == len(set(seen)) == len(changed)  # every changed version, exactly once
        assert set(seen) == changed
        origin = {(p["data"]["resource"], p["data"]["object_id"]): p["data"]["origin"] for p in payloads}
        assert {origin[key] for key in changed_while_down} == {"backfill"}
        recovered = sum(1 for value in origin.values() if value == "backfill")
        assert recovered == report.as_dict()["totals"]["emitted"] >= len(changed_while_down) + 1

        again = await sweep.backfill_tenant(runtime, service_tenant, since=since)
        assert again.as_dict()["totals"]["emitted"] == 0
        await asyncio.to_thread(service.settle)
        assert len(sink.sink.received) == len(changed)
    finally:
        service.server.stop()


class Killed(BaseException):
    """Stands in for the process dying: nothing after it runs, nothing uncommitted survives."""


async def test_a_backfill_killed_midway_and_run_again_loses_and_duplicates_nothing(
    runtime, tenant, simulator, monkeypatch
):
    simulator.state.seed(OWNER_ACCOUNT_ID, "invoice", 350)  # 4 pages
    await subscriptions.create(runtime, {"url": "https://hooks.example.com/x"})
    since = datetime.now(UTC) - timedelta(days=61)
    real_stage_many = emit.stage_many
    pages = 0

    async def dying_stage_many(*args, **kwargs):
        nonlocal pages
        pages += 1
        staged = await real_stage_many(*args, **kwargs)
        if pages == 3:  # the third page is staged but the process dies before its commit
            raise Killed
        return staged

    monkeypatch.setattr(emit, "stage_many", dying_stage_many)
    with pytest.raises(Killed):
        await sweep.backfill_tenant(runtime, tenant, since=since, resources=["invoice"])
    assert await _count(runtime, Event) == 200  # two pages committed, the third lost with the process
    async with runtime.db.sessions() as session:
        assert await session.get(BackfillState, (tenant.id, "invoice")) is None  # the watermark did not move

    monkeypatch.setattr(emit, "stage_many", real_stage_many)
    report = await sweep.backfill_tenant(runtime, tenant, since=since, resources=["invoice"])
    [part] = report.resources
    assert (part.scanned, part.known, part.emitted) == (350, 200, 150)
    assert await _count(runtime, ObjectVersion) == 350
    assert await _count(runtime, Event) == 350 + 1  # and the second run's backfill.recovered
    async with runtime.db.sessions() as session:
        object_ids = (await session.execute(select(Event.object_id).where(Event.origin == "backfill"))).scalars().all()
    assert len(set(object_ids)) == 350


async def test_dry_run_reports_and_changes_nothing(runtime, tenant, simulator):
    simulator.state.seed(OWNER_ACCOUNT_ID, "client", 120)
    report = await sweep.backfill_tenant(
        runtime, tenant, since=datetime.now(UTC) - timedelta(days=61), resources=["client"], dry_run=True
    )
    [part] = report.resources
    assert (part.pages, part.scanned, part.emitted) == (2, 120, 120)
    for model in (Event, ObjectVersion, BackfillState):
        assert await _count(runtime, model) == 0


async def test_day_granular_eastern_filter_finds_a_2330_eastern_change_across_midnight(runtime, tenant, simulator):
    state = simulator.state
    late_evening = datetime(2026, 11, 20, 23, 30, tzinfo=EASTERN)  # 04:30 UTC on the 21st
    state.now = lambda: late_evening - timedelta(minutes=45)
    before = state.create_object(OWNER_ACCOUNT_ID, "invoice")
    state.now = lambda: late_evening
    found = state.create_object(OWNER_ACCOUNT_ID, "invoice")
    since = datetime(2026, 11, 21, 4, 10, tzinfo=UTC)  # 23:10 Eastern on the 20th: a UTC-day filter would miss it

    report = await sweep.backfill_tenant(runtime, tenant, since=since, resources=["invoice"])
    assert report.resources[0].emitted == 1
    async with runtime.db.sessions() as session:
        [event] = (await session.execute(select(Event).where(Event.origin == "backfill"))).scalars().all()
    assert event.object_id == str(found["id"]) != str(before["id"])
    payload = json.loads(event.payload)
    assert payload["data"]["object"]["updated"] == "2026-11-21T04:30:00Z"
    assert payload["type"] == "invoice.created" and payload["data"]["origin"] == "backfill"
    [listing] = [r for r in state.requests if r["path"].endswith("/invoices/invoices")]
    assert ("search[updated_min]", "2026-11-19") in listing["query"]


async def test_a_late_webhook_after_polling_emitted_is_not_delivered_again(service, runtime, tenant, simulator, sink):
    await registrar.sync_tenant(runtime, tenant)
    await asyncio.to_thread(service.settle)
    created = await subscriptions.create(runtime, {"url": f"{sink.base_url}/all"})
    [invoice] = simulator.state.seed(OWNER_ACCOUNT_ID, "invoice", 1)
    since = datetime.now(UTC) - timedelta(seconds=1)
    simulator.state.pause_deliveries()  # FreshBooks is slow today
    simulator.state.update_object(OWNER_ACCOUNT_ID, "invoice", invoice["id"], {"notes": "late"})
    await sweep.backfill_tenant(runtime, tenant, since=since, resources=["invoice"])
    await asyncio.to_thread(service.settle)
    simulator.state.resume_deliveries()
    await asyncio.to_thread(service.settle)
    [payload] = _payloads(sink, created.secret)
    assert payload["data"]["origin"] == "backfill"


async def test_scheduled_sweep_keeps_watermarks_and_one_replica_per_interval(runtime, tenant, simulator):
    simulator.state.create_object(OWNER_ACCOUNT_ID, "invoice")
    assert await sweep_due_tenants(runtime) == 1
    assert await sweep_due_tenants(runtime) == 0  # the turn lasts most of the interval, whoever sweeps
    states = {s.resource: s for s in await sweep.status(runtime)}
    assert set(states) == set(runtime.events)
    invoice = states["invoice"]
    assert invoice.watermark is not None and invoice.last_run_status == "ok"
    assert invoice.recovered_total == 1 and invoice.last_emitted == 1
    assert invoice.watermark <= invoice.last_run_at - timedelta(seconds=runtime.settings.backfill_watermark_margin)


async def test_backfill_cli_summary_status_and_failures(runtime, tenant, simulator, cli_env, tmp_path):
    from test_cli import _run

    from webhook_service.tenants import onboarding

    broken = await onboarding.import_refresh_token(runtime, simulator.state.issue_refresh_token(), 439001)
    async with runtime.db.sessions() as session:  # FreshBooks revoked this one's grant
        from webhook_service.storage import tenants as tenant_store

        row = await tenant_store.get(session, broken.id)
        refresh = runtime.box.decrypt(row.refresh_token_enc)
    await runtime.oauth.revoke(refresh)
    simulator.state.expire_access_tokens()
    simulator.state.seed(OWNER_ACCOUNT_ID, "client", 3)

    dry = _run(
        ["backfill", "--all", "--since", "70d", "--resources", "client", "--dry-run", "--json"], cli_env, cwd=tmp_path
    )
    summary = json.loads(dry.stdout)
    assert dry.returncode == 1 and summary["failed_tenants"] == [broken.id]
    ok = next(t for t in summary["tenants"] if t["tenant_id"] == tenant.id)
    assert ok["totals"]["emitted"] == 3 and ok["dry_run"] is True
    assert f"backfill failed for tenant(s) {broken.id}" in dry.stderr

    real = _run(
        ["backfill", "--tenant", tenant.id, "--since", "70d", "--resources", "client,invoice"], cli_env, cwd=tmp_path
    )
    assert real.returncode == 0, real.stderr
    assert "3 emitted" in real.stdout
    status = json.loads(_run(["backfill", "status", "--json"], cli_env, cwd=tmp_path).stdout)
    clients = next(s for s in status if s["tenant_id"] == tenant.id and s["resource"] == "client")
    assert clients["recovered_by_polling"] == 3 and clients["watermark"] is not None
    assert _run(["backfill"], cli_env, cwd=tmp_path).returncode == 2
    assert _run(["backfill", "--tenant", tenant.id, "--resources", "invoices"], cli_env, cwd=tmp_path).returncode == 2


async def test_recovered_counts_are_metrics(service, runtime, tenant, simulator):
    import httpx

    def recovered(text: str) -> float:
        line = next(
            (
                ln
                for ln in text.splitlines()
                if ln.startswith('webhook_service_backfill_recovered_events_total{resource="tax"}')
            ),
            None,
        )
        return float(line.split()[-1]) if line else 0.0

    before = recovered(httpx.get(f"{service.base_url}/metrics").text)
    simulator.state.seed(OWNER_ACCOUNT_ID, "tax", 2)
    # the sweep runs in this process; the service process (here: the same Python process) exports the counter
    await sweep.backfill_tenant(runtime, tenant, since=datetime.now(UTC) - timedelta(days=61), resources=["tax"])
    response = httpx.get(f"{service.base_url}/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    assert recovered(response.text) == before + 2
