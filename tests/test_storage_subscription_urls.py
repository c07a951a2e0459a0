"""A subscriber URL the egress policy refuses for its address says how to allow that address."""

from __future__ import annotations

import pytest
from conftest import make_settings

from webhook_service.delivery import subscriptions
from webhook_service.runtime import Runtime

HINT = "(see README → Subscriptions and delivery)"


@pytest.fixture
def settings(database_url, simulator, service_socket):
    return make_settings(database_url, simulator, service_socket, outbound_allowed_cidrs="")


async def _refusal(runtime: Runtime, url: str) -> str:
    with pytest.raises(subscriptions.SubscriptionError) as refused:
        await subscriptions.create(runtime, {"url": url})
    return str(refused.value)


async def test_a_refused_loopback_url_names_the_setting_that_allows_it(runtime):
    assert await _refusal(runtime, "http://127.0.0.1:9/hook") == (
        f"url: 127.0.0.1 is refused: loopback (127.0.0.0/8); to allow it set OUTBOUND_ALLOWED_CIDRS=127.0.0.0/8 {HINT}"
    )
    assert await _refusal(runtime, "http://[::1]:9/hook") == (
        f"url: ::1 is refused: loopback (::1); to allow it set OUTBOUND_ALLOWED_CIDRS=::1/128 {HINT}"
    )
    assert await _refusal(runtime, "http://2130706433/") == (
        "url: 2130706433 (127.0.0.1) is refused: loopback (127.0.0.0/8); "
        f"to allow it set OUTBOUND_ALLOWED_CIDRS=127.0.0.0/8 {HINT}"
    )
    assert await subscriptions.list_all(runtime) == []


async def test_the_setting_named_keeps_what_is_allowed_already(database_url, simulator, service_socket):
    allowing = make_settings(database_url, simulator, service_socket, outbound_allowed_cidrs="192.168.0.0/16")
    async with Runtime.open(allowing, migrate_schema=False) as runtime:
        assert await _refusal(runtime, "http://10.1.2.3/hook") == (
            "url: 10.1.2.3 is refused: private (RFC 1918); "
            f"to allow it set OUTBOUND_ALLOWED_CIDRS=192.168.0.0/16,10.0.0.0/8 {HINT}"
        )


async def test_other_problems_say_nothing_about_the_allow_list(runtime):
    for url in ("ftp://127.0.0.1/", "http://user:pw@10.0.0.1/", "not a url"):
        assert "OUTBOUND_ALLOWED_CIDRS" not in await _refusal(runtime, url)
