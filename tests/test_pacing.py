"""The periodic duties' manners toward FreshBooks: work spread over the interval, and one tenant's
background requests (API calls and token refreshes alike) spaced by ``FRESHBOOKS_BACKGROUND_RATE``,
while a webhook's fetch is never held back.

Only lower bounds on times are asserted (the pace guarantees them whatever the machine's speed).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from conftest import OWNER_ACCOUNT_ID

from webhook_service.core.pacing import background, spread
from webhook_service.storage import tenants as tenant_store

RATE = 5.0
"""Per second: turns 200 ms apart. The gaps are measured where FreshBooks sees them, the simulator's
arrivals, which a loaded machine jitters by milliseconds: at 20/s a 10% tolerance (5 ms) was once too
tight beside the rest of the suite (43 ms between arrivals of requests sent 50 ms apart)."""


async def test_spread_starts_item_i_no_earlier_than_its_share_of_the_interval_and_runs_every_one():
    loop = asyncio.get_running_loop()
    started_at: dict[int, float] = {}

    async def work(item: int) -> None:
        started_at[item] = loop.time()
        if item == 3:
            raise RuntimeError("one tenant's failure")

    t0 = loop.time()
    failed = await spread(list(range(8)), 0.4, work, limit=2)
    assert failed == 1, "the failure is counted, and the others still ran"
    assert sorted(started_at) == list(range(8))
    for item, at in started_at.items():
        assert at - t0 >= item * 0.05 - 0.001, f"item {item} started before its turn"


async def test_a_tenants_background_requests_are_spaced_and_a_webhook_fetch_is_not_held(runtime, tenant, simulator):
    simulator.state.seed(OWNER_ACCOUNT_ID, "invoice", 3)
    simulator.state.reset_logs()
    with background(RATE):
        await asyncio.gather(*(runtime.freshbooks.list_page(tenant, "invoice") for _ in range(4)))
    sent = sorted(entry["time"] for entry in simulator.state.requests if "/invoices" in entry["path"])
    assert len(sent) == 4
    gaps = [b - a for a, b in zip(sent, sent[1:], strict=False)]
    assert min(gaps) >= 1 / RATE * 0.9, f"background requests of one tenant {gaps} apart"

    loop = asyncio.get_running_loop()
    before = loop.time()
    await asyncio.gather(*(runtime.freshbooks.list_page(tenant, "invoice") for _ in range(4)))
    # outside a duty nothing waits for a turn: four requests in less than three turns
    assert loop.time() - before < 3 / RATE, "a fetch outside the duties was paced"


async def test_a_proactive_refresh_takes_the_tenants_turn_like_its_api_calls(runtime, tenant, simulator):
    async with runtime.db.sessions() as session:  # due: expiring inside its margin
        row = await tenant_store.get(session, tenant.id)
        row.access_expires_at = row.access_expires_at - timedelta(hours=24)
        await session.commit()
    simulator.state.reset_logs()
    with background(RATE):
        await asyncio.gather(
            runtime.tokens.refresh_expiring(),
            runtime.freshbooks.list_page(tenant, "invoice"),
            runtime.freshbooks.list_page(tenant, "invoice"),
        )
    api = [entry["time"] for entry in simulator.state.requests if "/invoices" in entry["path"]]
    token = [entry["time"] for entry in simulator.state.token_requests]
    assert len(api) == 2 and len(token) == 1
    sent = sorted(api + token)
    assert min(b - a for a, b in zip(sent, sent[1:], strict=False)) >= 1 / RATE * 0.9
