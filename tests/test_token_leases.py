"""The refresh lease outlives a slow refresh: nobody spends the token twice, nobody loses the pair.

The simulator's ``token_delay`` holds back the token endpoint's successful answers (decided on
arrival) while refusals answer at once, the order in which a second spender used to learn
``invalid_grant`` and disconnect the customer while the first one's pair was on its way. A delay far
longer than any test needs holds an answer until the test sets the delay back to 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from conftest import OWNER_ACCOUNT_ID, refresh_requests
from prometheus_client import REGISTRY
from sqlalchemy import update
from token_worker import run_workers

from webhook_service.core.logs import configure_logging
from webhook_service.freshbooks.oauth import OAuthClient
from webhook_service.freshbooks.tokens import TenantUnavailable, TokenManager
from webhook_service.runtime import Runtime
from webhook_service.storage import tenants as tenant_store
from webhook_service.storage.columns import utcnow
from webhook_service.storage.models import Tenant, TenantStatus

HOLD = 600.0  # "until released": every test sets the delay back to 0 long before this
SHORTEST_LEASE = 5  # TOKEN_REFRESH_LEASE_SECONDS' minimum


@pytest.fixture
def logs(capsys) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """Every JSON log line so far (debug included), accumulated across reads."""
    root = logging.getLogger()
    level = root.level
    configure_logging("debug", "json")
    lines: list[dict[str, Any]] = []

    def read() -> list[dict[str, Any]]:
        lines.extend(json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{"))
        return lines

    yield read
    root.handlers[:] = []
    root.setLevel(level)


async def until(condition: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """Wait for ``condition`` to hold (polling; never a fixed sleep standing in for it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"still waiting for {what} after {timeout:g} s")
        await asyncio.sleep(0.01)


def logged(lines: Callable[[], list[dict[str, Any]]], event: str) -> Callable[[], list[dict[str, Any]]]:
    return lambda: [line for line in lines() if line.get("event") == event]


def leases_lost() -> float:
    return REGISTRY.get_sample_value("webhook_service_leases_lost_total", {"kind": "token_refresh"}) or 0.0


def short_lease(settings):
    return settings.model_copy(update={"token_refresh_lease_seconds": SHORTEST_LEASE})


def manager(runtime, settings, *, ahead: timedelta = timedelta(0), oauth: OAuthClient | None = None) -> TokenManager:
    """Another process's token manager on the same database; ``ahead`` sees leases run out early."""
    return TokenManager(
        runtime.db,
        oauth or OAuthClient(settings, runtime.http),
        runtime.box,
        settings,
        clock=lambda: utcnow() + ahead,
    )


async def load(runtime, tenant_id) -> Tenant:
    async with runtime.db.sessions() as session:
        row = await tenant_store.get(session, tenant_id)
    assert row is not None
    return row


async def expire_in_db(runtime, tenant_id) -> None:
    async with runtime.db.sessions() as session:
        await session.execute(
            update(Tenant).where(Tenant.id == tenant_id).values(access_expires_at=utcnow() - timedelta(seconds=5))
        )
        await session.commit()


def outcomes(simulator) -> list[tuple[int, str | None]]:
    return [(r["status"], r["error"]) for r in refresh_requests(simulator.state)]


# -- the reported bug, across two OS processes ------------------------------------------------------


@pytest.mark.slow
def test_two_processes_wait_out_a_refresh_slower_than_the_lease(settings, simulator, tmp_path):
    """FreshBooks takes 7 s, the lease is 5 s: the second process waits for the first one's pair
    (whose lease is renewed meanwhile) instead of spending the token again and disconnecting."""

    async def connect() -> str:
        from webhook_service.tenants import onboarding

        async with Runtime.open(settings, migrate_schema=True) as runtime:
            tenant = await onboarding.import_refresh_token(runtime, simulator.state.issue_refresh_token(), 439000)
            assert isinstance(tenant, Tenant)
            return tenant.id

    tenant_id = asyncio.run(connect())
    simulator.state.seed(OWNER_ACCOUNT_ID, "client", 4)
    simulator.state.expire_access_tokens()  # both processes get a 401 and need a new token
    simulator.state.reset_logs()
    simulator.state.token_delay = SHORTEST_LEASE + 2

    reports = run_workers(
        settings,
        simulator,
        tenant_id,
        tmp_path,
        workers=2,
        calls=10,
        env={"TOKEN_REFRESH_LEASE_SECONDS": str(SHORTEST_LEASE)},
    )

    assert [r["errors"] for r in reports] == [[], []]
    assert [r["ok"] for r in reports] == [10, 10]
    assert outcomes(simulator) == [(200, None)]  # exactly one refresh reached FreshBooks
    assert not [r for r in simulator.state.token_requests if r.get("error")]

    async def status() -> str:
        async with Runtime.open(settings, migrate_schema=False) as runtime:
            return (await load(runtime, tenant_id)).status

    assert asyncio.run(status()) == TenantStatus.ACTIVE.value


# -- a cancelled caller does not abandon the call ---------------------------------------------------


async def test_cancelled_caller_does_not_abandon_the_refresh(runtime, tenant, simulator):
    simulator.state.token_delay = HOLD
    await expire_in_db(runtime, tenant.id)
    caller = asyncio.create_task(runtime.tokens.access_token(tenant.id))
    await until(lambda: refresh_requests(simulator.state), "the refresh to reach FreshBooks")

    caller.cancel()  # e.g. the inbox processor stopped at shutdown
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert (await load(runtime, tenant.id)).token_version == tenant.token_version  # the answer is still held

    simulator.state.token_delay = 0  # FreshBooks answers now: the call is still there to receive it
    token = await runtime.tokens.access_token(tenant.id)

    row = await load(runtime, tenant.id)
    assert token.version == row.token_version == tenant.token_version + 1
    assert token.token == runtime.box.decrypt(row.access_token_enc)
    assert row.status == TenantStatus.ACTIVE.value
    assert outcomes(simulator) == [(200, None)]  # the next call used the stored pair: no second refresh


async def test_shutdown_waits_for_a_refresh_whose_caller_was_cancelled(settings, runtime, tenant, simulator, logs):
    """Another process stops (its tasks cancelled) while its refresh is held: it stores the pair
    before closing its HTTP client and database."""
    simulator.state.token_delay = HOLD
    await expire_in_db(runtime, tenant.id)

    async def a_process_stopping_mid_refresh() -> None:
        async with Runtime.open(settings, migrate_schema=False) as other:
            caller = other.tasks.spawn(other.tokens.access_token(tenant.id), name="caller")
            await until(lambda: refresh_requests(simulator.state), "the refresh to reach FreshBooks")
        assert caller.cancelled()  # Runtime.open's exit cancelled it, then waited for its refresh

    stopping = asyncio.create_task(a_process_stopping_mid_refresh())
    await until(logged(logs, "token_rotations_draining"), "the stopping process to wait for its refresh")
    assert (await load(runtime, tenant.id)).token_version == tenant.token_version

    simulator.state.token_delay = 0
    await stopping

    row = await load(runtime, tenant.id)
    assert row.token_version == tenant.token_version + 1
    assert row.status == TenantStatus.ACTIVE.value
    assert (await runtime.tokens.access_token(tenant.id)).version == row.token_version
    assert outcomes(simulator) == [(200, None)]


# -- lost leases ------------------------------------------------------------------------------------


async def test_lease_lost_mid_call_is_counted_logged_and_the_pair_kept(runtime, tenant, settings, simulator, logs):
    """Renewals find the lease taken: counted and logged once; the successor pair is still stored
    (on the version alone), because losing it would disconnect the customer."""
    ours = manager(runtime, short_lease(settings))
    lost_before = leases_lost()
    simulator.state.token_delay = HOLD
    caller = asyncio.create_task(ours.refresh(tenant.id, stale_version=tenant.token_version))
    await until(lambda: refresh_requests(simulator.state), "the refresh to reach FreshBooks")
    await until(logged(logs, "token_lease_renewed"), "the heartbeat to renew the lease")

    async with runtime.db.sessions() as session:  # another process takes the lease over
        await session.execute(
            update(Tenant)
            .where(Tenant.id == tenant.id)
            .values(refresh_lease_owner="intruder", refresh_lease_until=utcnow() + timedelta(hours=1))
        )
        await session.commit()
    await until(lambda: leases_lost() > lost_before, "a renewal to find the lease gone")
    simulator.state.token_delay = 0
    token = await caller
    await ours.close()

    row = await load(runtime, tenant.id)
    assert token.version == row.token_version == tenant.token_version + 1
    assert token.token == runtime.box.decrypt(row.access_token_enc)
    assert row.status == TenantStatus.ACTIVE.value
    assert row.refresh_lease_owner is None
    assert leases_lost() == lost_before + 1  # one lease, lost once
    [lost] = logged(logs, "lease_lost")()
    assert (lost["level"], lost["kind"], lost["during"]) == ("warning", "token_refresh", "renewal")
    [kept] = logged(logs, "token_stored_without_lease")()
    assert kept["level"] == "critical"
    assert token.token not in json.dumps(logs())  # debug lines included: no secret in any of them


async def test_invalid_grant_after_taking_over_an_expired_lease_waits_for_the_pair(
    runtime, tenant, settings, simulator, logs
):
    """B takes over A's lease that looks run out (B's clock is ahead), spends the same token and
    gets ``invalid_grant`` while A's answer is held: B waits for A's pair instead of marking.
    A's commit finds its lease gone: counted, and the pair stored on the version alone."""
    lease = short_lease(settings)
    a = manager(runtime, lease)
    b = manager(runtime, lease, ahead=timedelta(hours=1))
    lost_before = leases_lost()
    simulator.state.token_delay = HOLD
    first = asyncio.create_task(a.refresh(tenant.id, stale_version=tenant.token_version))
    await until(lambda: refresh_requests(simulator.state), "A's refresh to reach FreshBooks")

    second = asyncio.create_task(b.refresh(tenant.id, stale_version=tenant.token_version))
    waiting = logged(logs, "token_refresh_invalid_grant_waiting")
    await until(lambda: second.done() or waiting(), "B to act on its invalid_grant")
    assert (await load(runtime, tenant.id)).status == TenantStatus.ACTIVE.value

    await _both_end_with_one_pair(runtime, tenant, simulator, (first, second), (a, b))
    assert leases_lost() == lost_before + 1
    assert [line["level"] for line in logged(logs, "token_stored_without_lease")()] == ["critical"]
    assert not logged(logs, "tenant_reauth_required")()


async def test_invalid_grant_while_another_owner_refreshes_waits_for_its_outcome(
    runtime, tenant, settings, simulator, logs
):
    """A holds the lease but is slow to send; C takes it over and spends first (held). A's own
    spend gets ``invalid_grant``: C's lease is live, so A waits for C's pair."""
    lease = short_lease(settings)
    go = asyncio.Event()
    oauth_a = OAuthClient(lease, runtime.http)
    send = oauth_a.refresh

    async def late_refresh(refresh_token: str):
        await go.wait()
        return await send(refresh_token)

    oauth_a.refresh = late_refresh  # type: ignore[method-assign]
    a = manager(runtime, lease, oauth=oauth_a)
    c = manager(runtime, lease, ahead=timedelta(hours=1))
    simulator.state.token_delay = HOLD

    first = asyncio.create_task(a.refresh(tenant.id, stale_version=tenant.token_version))
    await until(logged(logs, "token_lease_acquired"), "A to hold the lease")
    taker = asyncio.create_task(c.refresh(tenant.id, stale_version=tenant.token_version))
    await until(lambda: refresh_requests(simulator.state), "C's refresh to reach FreshBooks")
    go.set()  # A spends the token C already spent
    waiting = logged(logs, "token_refresh_invalid_grant_waiting")
    await until(lambda: first.done() or waiting(), "A to act on its invalid_grant")
    assert (await load(runtime, tenant.id)).status == TenantStatus.ACTIVE.value

    await _both_end_with_one_pair(runtime, tenant, simulator, (first, taker), (a, c))
    assert not logged(logs, "tenant_reauth_required")()


async def _both_end_with_one_pair(runtime, tenant, simulator, refreshes, managers) -> None:
    """Let FreshBooks answer: both refreshes end with the one new pair, the tenant still active,
    after one rotation and one ``invalid_grant``."""
    simulator.state.token_delay = 0
    tokens = [await refresh for refresh in refreshes]
    for manager_ in managers:
        await manager_.close()
    assert tokens[0].token == tokens[1].token
    row = await load(runtime, tenant.id)
    assert row.status == TenantStatus.ACTIVE.value
    assert row.token_version == tenant.token_version + 1
    assert outcomes(simulator) == [(200, None), (400, "invalid_grant")]


async def test_real_invalid_grant_after_an_expired_lease_is_marked_once_the_wait_is_over(
    runtime, tenant, settings, simulator, logs
):
    """Taking over a lease that ran out unreleased, then ``invalid_grant`` with nothing arriving:
    the manager waits (bounded) for the old holder's pair, then marks ``reauth_required``."""
    quick = short_lease(settings).model_copy(update={"freshbooks_timeout": 0.5})
    refresh = runtime.box.decrypt((await load(runtime, tenant.id)).refresh_token_enc)
    await runtime.oauth.revoke(refresh)  # the customer revoked the app
    async with runtime.db.sessions() as session:  # a crashed holder's lease, run out
        await session.execute(
            update(Tenant)
            .where(Tenant.id == tenant.id)
            .values(refresh_lease_owner="crashed", refresh_lease_until=utcnow() - timedelta(seconds=1))
        )
        await session.commit()
    simulator.state.reset_logs()

    with pytest.raises(TenantUnavailable) as caught:
        await manager(runtime, quick).refresh(tenant.id, stale_version=tenant.token_version)

    assert caught.value.status == TenantStatus.REAUTH_REQUIRED.value
    row = await load(runtime, tenant.id)
    assert row.status == TenantStatus.REAUTH_REQUIRED.value
    assert (row.status_reason or "").startswith("invalid_grant")
    assert row.refresh_lease_owner is None
    assert outcomes(simulator) == [(400, "invalid_grant")]
    [waited] = logged(logs, "token_refresh_invalid_grant_waiting")()
    assert waited["bounded"] is True  # it waited for the old holder (bounded) before marking
    assert len(logged(logs, "tenant_reauth_required")()) == 1


# -- the simulator's slow token endpoint --------------------------------------------------------------


async def test_simulator_token_delay_holds_answers_without_blocking_other_requests(simulator):
    async with httpx.AsyncClient(base_url=simulator.base_url, timeout=30) as http:
        assert (await http.post("/_sim/token-delay", json={"seconds": HOLD})).json() == {"seconds": HOLD}
        assert (await http.post("/_sim/token-delay", json={"seconds": -1})).status_code == 400
        assert (await http.get("/_sim/token-delay")).json() == {"seconds": HOLD}
        held = asyncio.create_task(
            http.post(
                "/auth/oauth/token",
                json={
                    "grant_type": "refresh_token",
                    "refresh_token": simulator.state.issue_refresh_token(),
                    "client_id": simulator.state.client_id,
                    "client_secret": simulator.state.client_secret,
                },
            )
        )
        await until(lambda: simulator.state.token_requests, "the refresh to arrive")
        refused = await http.post(  # the server still answers: a refusal at once, while the grant is held
            "/auth/oauth/token",
            json={"grant_type": "refresh_token", "refresh_token": "spent", **_client(simulator)},
        )
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
        assert not held.done()

        assert (await http.post("/_sim/token-delay", json={"seconds": 0})).json() == {"seconds": 0}
        answer = await held
    assert answer.status_code == 200 and "access_token" in answer.json()


def _client(simulator) -> dict[str, str]:
    return {"client_id": simulator.state.client_id, "client_secret": simulator.state.client_secret}
