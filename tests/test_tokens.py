"""The token manager: one refresh per expiry, committed before use, no storms, no dead tokens."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from conftest import OWNER_ACCOUNT_ID, refresh_requests
from sqlalchemy import text
from token_worker import run_workers

from webhook_service.freshbooks.oauth import OAuthClient
from webhook_service.freshbooks.tokens import TenantUnavailable, TokenManager, TokenPersistError
from webhook_service.storage import tenants as tenant_store
from webhook_service.storage.columns import utcnow
from webhook_service.storage.models import TenantStatus


async def _load(runtime, tenant_id):
    async with runtime.db.sessions() as session:
        return await tenant_store.get(session, tenant_id)


async def _expire_in_db(runtime, tenant_id):
    async with runtime.db.sessions() as session:
        row = await tenant_store.get(session, tenant_id)
        row.access_expires_at = utcnow() - timedelta(seconds=5)
        await session.commit()


async def test_fifty_concurrent_calls_after_expiry_refresh_once(runtime, tenant, simulator):
    simulator.state.seed(OWNER_ACCOUNT_ID, "client", 3)
    simulator.state.expire_access_tokens()  # FreshBooks answers 401 while our row still looks valid
    results = await asyncio.gather(*(runtime.freshbooks.list_page(tenant, "client") for _ in range(50)))

    assert all(page.total == 3 for page in results)
    refreshes = refresh_requests(simulator.state)
    assert len(refreshes) == 1
    assert refreshes[0]["status"] == 200
    assert not [r for r in simulator.state.token_requests if r.get("error") == "invalid_grant"]
    row = await _load(runtime, tenant.id)
    assert row.status == TenantStatus.ACTIVE.value
    assert row.token_version == tenant.token_version + 1


async def test_proactive_refresh_before_expiry_happens_once(runtime, tenant, simulator):
    simulator.state.seed(OWNER_ACCOUNT_ID, "item", 2)
    await _expire_in_db(runtime, tenant.id)
    pages = await asyncio.gather(*(runtime.freshbooks.list_page(tenant, "item") for _ in range(50)))

    assert {page.total for page in pages} == {2}
    assert len(refresh_requests(simulator.state)) == 1
    # every API call carried the new token: none went out with the expired one and got a 401
    assert all(r["status"] == 200 for r in simulator.state.requests)


async def test_refresh_margin_is_between_60_and_180_seconds(runtime, tenant):
    margins = {runtime.tokens.refresh_margin(f"ten_{n}", 1) for n in range(200)}
    assert min(margins) >= timedelta(seconds=60)
    assert max(margins) <= timedelta(seconds=180)
    assert len(margins) > 50  # spread out, not one fixed value


async def test_token_inside_margin_is_refreshed_but_outside_is_not(runtime, tenant, simulator, settings):
    row = await _load(runtime, tenant.id)
    margin = runtime.tokens.refresh_margin(tenant.id, tenant.token_version)
    now = [row.access_expires_at - margin - timedelta(seconds=30)]
    manager = TokenManager(runtime.db, runtime.oauth, runtime.box, settings, clock=lambda: now[0])

    first = await manager.access_token(tenant.id)
    assert refresh_requests(simulator.state) == [] and first.version == tenant.token_version
    now[0] = row.access_expires_at - margin + timedelta(seconds=5)  # time passes: now inside the margin
    second = await manager.access_token(tenant.id)
    assert len(refresh_requests(simulator.state)) == 1
    assert second.version == tenant.token_version + 1


async def test_failed_commit_flags_tenant_and_never_sends_the_dead_token(runtime, tenant, simulator, monkeypatch):
    simulator.state.seed(OWNER_ACCOUNT_ID, "client", 1)
    dead_refresh = runtime.box.decrypt((await _load(runtime, tenant.id)).refresh_token_enc)

    async def broken_store(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tenant_store, "store_rotated_pair", broken_store)
    await _expire_in_db(runtime, tenant.id)

    with pytest.raises(TokenPersistError):
        await runtime.freshbooks.list_page(tenant, "client")

    row = await _load(runtime, tenant.id)
    assert row.status == TenantStatus.REAUTH_REQUIRED.value
    assert "token_commit_failed" in row.status_reason
    assert [r["refresh_token"] for r in refresh_requests(simulator.state)] == [dead_refresh]

    simulator.state.reset_logs()
    for _ in range(3):
        with pytest.raises(TenantUnavailable):
            await runtime.freshbooks.list_page(tenant, "client")
    assert simulator.state.token_requests == []
    assert simulator.state.requests == []  # neither the dead refresh token nor the old access token went out


async def test_dead_token_stays_unused_even_when_flagging_fails(runtime, tenant, simulator, monkeypatch):
    async def broken(*args, **kwargs):
        raise OSError("database gone")

    monkeypatch.setattr(tenant_store, "store_rotated_pair", broken)
    monkeypatch.setattr(tenant_store, "leave_active", broken)
    await _expire_in_db(runtime, tenant.id)
    with pytest.raises(TokenPersistError):
        await runtime.tokens.access_token(tenant.id)
    assert (await _load(runtime, tenant.id)).status == TenantStatus.ACTIVE.value  # the flag could not be written

    simulator.state.reset_logs()
    with pytest.raises(TenantUnavailable):
        await runtime.tokens.access_token(tenant.id)
    with pytest.raises(TenantUnavailable):
        await runtime.tokens.refresh(tenant.id, stale_version=tenant.token_version)
    assert simulator.state.token_requests == []


async def test_real_invalid_grant_marks_reauth_required_without_a_storm(runtime, tenant, simulator):
    refresh = runtime.box.decrypt((await _load(runtime, tenant.id)).refresh_token_enc)
    await runtime.oauth.revoke(refresh)  # the customer revoked the app in FreshBooks
    simulator.state.reset_logs()

    with pytest.raises(TenantUnavailable) as caught:
        await runtime.freshbooks.list_page(tenant, "client")
    assert caught.value.status == TenantStatus.REAUTH_REQUIRED.value
    row = await _load(runtime, tenant.id)
    assert row.status == TenantStatus.REAUTH_REQUIRED.value
    assert row.status_reason.startswith("invalid_grant")

    attempts = len(simulator.state.token_requests)
    results = await asyncio.gather(
        *(runtime.freshbooks.list_page(tenant, "client") for _ in range(20)), return_exceptions=True
    )
    assert all(isinstance(r, TenantUnavailable) for r in results)
    assert len(simulator.state.token_requests) == attempts  # no retry storm
    assert attempts == 1


async def test_invalid_grant_after_another_process_rotated_uses_its_pair(runtime, tenant, simulator, settings):
    """Process B's lease ran out mid-request; A rotated; B's stale token gets invalid_grant."""
    far_future = lambda: utcnow() + timedelta(hours=1)  # noqa: E731  A sees B's lease as expired
    manager_a = TokenManager(runtime.db, OAuthClient(settings, runtime.http), runtime.box, settings, clock=far_future)
    oauth_b = OAuthClient(settings, runtime.http)
    manager_b = TokenManager(runtime.db, oauth_b, runtime.box, settings)
    real_refresh = oauth_b.refresh
    rotated_by_a = {}

    async def slow_refresh(refresh_token):
        rotated_by_a["token"] = await manager_a.refresh(tenant.id, stale_version=tenant.token_version)
        return await real_refresh(refresh_token)

    oauth_b.refresh = slow_refresh  # type: ignore[method-assign]
    token_b = await manager_b.refresh(tenant.id, stale_version=tenant.token_version)

    assert token_b.token == rotated_by_a["token"].token
    row = await _load(runtime, tenant.id)
    assert row.status == TenantStatus.ACTIVE.value
    assert row.token_version == tenant.token_version + 1
    outcomes = [(r["status"], r["error"]) for r in refresh_requests(simulator.state)]
    assert outcomes == [(200, None), (400, "invalid_grant")]


async def test_401_triggers_one_refresh_and_one_retry(runtime, tenant, simulator):
    simulator.state.seed(OWNER_ACCOUNT_ID, "tax", 2)
    simulator.state.expire_access_tokens()
    page = await runtime.freshbooks.list_page(tenant, "tax")
    assert page.total == 2
    assert [r["status"] for r in simulator.state.requests] == [401, 200]
    assert len(refresh_requests(simulator.state)) == 1


async def test_tokens_are_encrypted_at_rest(runtime, tenant):
    async with runtime.db.engine.connect() as connection:
        raw = (await connection.execute(text("SELECT access_token_enc, refresh_token_enc FROM tenants"))).one()
    access = runtime.box.decrypt(raw[0])
    refresh = runtime.box.decrypt(raw[1])
    assert access and refresh
    assert access not in raw[0] and refresh not in raw[1]


@pytest.mark.slow
def test_two_processes_share_one_refresh(settings, simulator, tmp_path):
    async def setup():
        from webhook_service.runtime import Runtime
        from webhook_service.tenants import onboarding

        async with Runtime.open(settings, migrate_schema=True) as runtime:
            tenant = await onboarding.import_refresh_token(runtime, simulator.state.issue_refresh_token(), 439000)
            return tenant.id

    tenant_id = asyncio.run(setup())
    simulator.state.seed(OWNER_ACCOUNT_ID, "client", 4)
    simulator.state.expire_access_tokens()
    simulator.state.reset_logs()
    reports = run_workers(settings, simulator, tenant_id, tmp_path, workers=2, calls=25)

    assert [r["ok"] for r in reports] == [25, 25]
    assert [r["errors"] for r in reports] == [[], []]
    refreshes = refresh_requests(simulator.state)
    assert len(refreshes) == 1, refreshes
    assert not [r for r in simulator.state.token_requests if r.get("error")]

    async def status():
        from webhook_service.runtime import Runtime

        async with Runtime.open(settings, migrate_schema=False) as runtime, runtime.db.sessions() as session:
            return (await tenant_store.get(session, tenant_id)).status

    assert asyncio.run(status()) == TenantStatus.ACTIVE.value


async def test_background_check_refreshes_only_tokens_inside_their_margin(runtime, tenant, simulator):
    from webhook_service.tenants import onboarding

    other = await onboarding.import_refresh_token(runtime, simulator.state.issue_refresh_token(), 439001)
    await _expire_in_db(runtime, tenant.id)
    simulator.state.reset_logs()

    assert await runtime.tokens.refresh_expiring() == 1
    assert len(refresh_requests(simulator.state)) == 1
    assert (await _load(runtime, tenant.id)).token_version == tenant.token_version + 1
    assert (await _load(runtime, other.id)).token_version == other.token_version


async def test_import_that_fails_after_rotation_keeps_the_pair_for_resume(runtime, simulator):
    from webhook_service.tenants import onboarding

    simulator.state.fail_next(1, status=503, retry_after=None, paths_prefix="/auth/api/v1/users/me")
    with pytest.raises(onboarding.HeldPairError) as caught:
        await onboarding.import_refresh_token(runtime, simulator.state.issue_refresh_token(), 439000)
    assert "--resume" in str(caught.value)
    tenant = await onboarding.complete(runtime, caught.value.pending_id, 439000)
    assert tenant.status == TenantStatus.ACTIVE.value
    assert len(refresh_requests(simulator.state)) == 1  # the resume used the held pair, not a new refresh
