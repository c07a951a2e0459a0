"""Subscriptions: create, read, update, delete, rotate the secret. Shared by the admin API and CLI."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from webhook_service.contract import operational
from webhook_service.contract.filters import FilterError, canonical
from webhook_service.contract.matching import invalid_patterns
from webhook_service.contract.types import FRESHBOOKS_NOUNS, OPERATIONAL_NOUNS
from webhook_service.core.egress import BLOCKED_NETWORKS, EgressPolicy, IPAddress, parse_address, url_host
from webhook_service.delivery.signing import generate_secret
from webhook_service.runtime import Runtime
from webhook_service.storage import outbox
from webhook_service.storage import subscriptions as store
from webhook_service.storage import tenants as tenant_store
from webhook_service.storage.columns import new_id, utcnow
from webhook_service.storage.leased import SubscriptionToSend
from webhook_service.storage.models import Subscription
from webhook_service.storage.session import Session

EDITABLE = (
    "url",
    "event_types",
    "tenant_id",
    "description",
    "enabled",
    "rate_limit_per_second",
    "filter",
    "strict_order",
)


OPERATOR_DISABLED = "disabled by an operator"


class SubscriptionError(ValueError):
    """The request cannot be applied; the message says why (shown to the caller)."""


class SubscriptionNotFound(LookupError):
    pass


@dataclass(frozen=True)
class Created:
    subscription: Subscription
    secret: str
    """Shown once: it is stored only encrypted."""


def secrets_for_signing(runtime: Runtime, subscription: SubscriptionToSend, now: datetime) -> list[str]:
    """The current secret, plus the previous one while its rotation grace lasts."""
    current = [runtime.box.decrypt(subscription.secret_enc)]
    if (
        subscription.previous_secret_enc
        and subscription.previous_secret_until
        and subscription.previous_secret_until > now
    ):
        current.append(runtime.box.decrypt(subscription.previous_secret_enc))
    return current


async def create(runtime: Runtime, fields: dict[str, Any]) -> Created:
    values = await _validated(runtime, fields, creating=True)
    secret = generate_secret()
    now = utcnow()
    subscription = Subscription(
        id=new_id("sub"),
        url=values["url"],
        event_types=json.dumps(values["event_types"]),
        tenant_id=values.get("tenant_id"),
        description=values.get("description", ""),
        enabled=values.get("enabled", True),
        rate_limit_per_second=values.get("rate_limit_per_second"),
        filter=values.get("filter"),
        strict_order=values.get("strict_order", False),
        rate_window_count=0,
        secret_enc=runtime.box.encrypt(secret),
        created_at=now,
        updated_at=now,
    )
    async with runtime.db.sessions() as session:
        store.add(session, subscription)
        await session.commit()
    return Created(subscription, secret)


async def get(runtime: Runtime, subscription_id: str) -> Subscription:
    async with runtime.db.sessions() as session:
        subscription = await store.get(session, subscription_id)
    if subscription is None:
        raise SubscriptionNotFound(subscription_id)
    return subscription


async def list_all(runtime: Runtime) -> list[Subscription]:
    async with runtime.db.sessions() as session:
        return await store.list_all(session)


async def modify(runtime: Runtime, subscription_id: str, fields: dict[str, Any]) -> Subscription:
    values = await _validated(runtime, fields, creating=False)
    async with runtime.db.sessions() as session:
        subscription = await store.get(session, subscription_id)
        if subscription is None:
            raise SubscriptionNotFound(subscription_id)
        now = utcnow()
        turned_off = values.get("enabled") is False and subscription.enabled
        for name, value in values.items():
            setattr(subscription, name, json.dumps(value) if name == "event_types" else value)
        if values.get("enabled") is True:
            subscription.disabled_reason = None
            subscription.failing_since = None
        subscription.updated_at = now
        if turned_off:
            subscription.disabled_reason = OPERATOR_DISABLED
            await _announce_disabled(session, subscription, OPERATOR_DISABLED, now)
        await session.commit()
    return subscription


async def remove(runtime: Runtime, subscription_id: str) -> None:
    async with runtime.db.sessions() as session:
        if not await store.delete(session, subscription_id):
            raise SubscriptionNotFound(subscription_id)
        await session.commit()


async def rotate_secret(runtime: Runtime, subscription_id: str, grace: timedelta | None = None) -> Created:
    """A new secret; the old one keeps signing beside it for ``grace`` (default from settings)."""
    grace = grace if grace is not None else timedelta(hours=runtime.settings.secret_rotation_grace_hours)
    secret = generate_secret()
    now = utcnow()
    async with runtime.db.sessions() as session:
        subscription = await store.get(session, subscription_id)
        if subscription is None:
            raise SubscriptionNotFound(subscription_id)
        subscription.previous_secret_enc = subscription.secret_enc
        subscription.previous_secret_until = now + grace
        subscription.secret_enc = runtime.box.encrypt(secret)
        subscription.updated_at = now
        await session.commit()
    return Created(subscription, secret)


async def disable(runtime: Runtime, subscription_id: str, reason: str) -> None:
    """Stop delivering: what is still queued becomes dead (``recover`` brings it back later). The
    first time, ``subscription.disabled`` goes to the other subscriptions that ask for it."""
    now = utcnow()
    async with runtime.db.sessions() as session:
        subscription = await store.disable(session, subscription_id, reason, now=now)
        if subscription is not None:
            await _announce_disabled(session, subscription, reason, now)
        await session.commit()
    if subscription is not None:
        runtime.signals.deliveries_ready()


async def _announce_disabled(session: Session, subscription: Subscription, reason: str, now: datetime) -> None:
    """``subscription.disabled``, in the transaction that disables it, to the others only."""
    event = operational.subscription_disabled(subscription, reason=reason, at=now)
    await outbox.emit(session, event, now=now, exclude={subscription.id})


async def _validated(runtime: Runtime, fields: dict[str, Any], *, creating: bool) -> dict[str, Any]:
    unknown = set(fields) - set(EDITABLE)
    if unknown:
        raise SubscriptionError(f"unknown fields: {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    if "url" in fields or creating:
        url = fields.get("url")
        if not isinstance(url, str) or not url:
            raise SubscriptionError("url is required")
        problem = _url_problem(runtime.settings.allowed_cidrs, runtime.settings.outbound_https_only, url)
        if problem:
            raise SubscriptionError(f"url: {problem}")
        values["url"] = url
    if "event_types" in fields or creating:
        patterns = fields.get("event_types", ["*"] if creating else None)
        if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) for p in patterns):
            raise SubscriptionError("event_types must be a non-empty list of strings")
        bad = invalid_patterns(patterns)
        if bad:
            raise SubscriptionError(
                f"event_types: {', '.join(bad)} not understood; use '*' (every FreshBooks event), "
                f"'<noun>.*' or a type listed by GET /admin/v1/event-types, with a noun among "
                f"{', '.join((*FRESHBOOKS_NOUNS, *OPERATIONAL_NOUNS))}"
            )
        values["event_types"] = list(dict.fromkeys(patterns))
    if "tenant_id" in fields:
        tenant_id = fields["tenant_id"]
        if tenant_id is not None:
            async with runtime.db.sessions() as session:
                if not isinstance(tenant_id, str) or await tenant_store.get(session, tenant_id) is None:
                    raise SubscriptionError(f"tenant_id: no tenant {tenant_id!r}")
        values["tenant_id"] = tenant_id
    if "description" in fields:
        if not isinstance(fields["description"], str) or len(fields["description"]) > 1000:
            raise SubscriptionError("description must be a string of at most 1000 characters")
        values["description"] = fields["description"]
    if "enabled" in fields:
        if not isinstance(fields["enabled"], bool):
            raise SubscriptionError("enabled must be true or false")
        values["enabled"] = fields["enabled"]
    if "rate_limit_per_second" in fields:
        limit = fields["rate_limit_per_second"]
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000):
            raise SubscriptionError("rate_limit_per_second must be an integer from 1 to 10000, or null")
        values["rate_limit_per_second"] = limit
    if "filter" in fields:  # stored as canonical JSON text; the message names the field at fault
        try:
            values["filter"] = None if fields["filter"] is None else canonical(fields["filter"])
        except FilterError as exc:
            raise SubscriptionError(str(exc)) from None
    if "strict_order" in fields:
        if not isinstance(fields["strict_order"], bool):
            raise SubscriptionError("strict_order must be true or false")
        values["strict_order"] = fields["strict_order"]
    return values


def _url_problem(allowed_cidrs: tuple[str, ...], https_only: bool, url: str) -> str | None:
    """What is wrong with ``url`` as a subscriber URL, or None; when it is only that the egress
    policy refuses its address, also the ``OUTBOUND_ALLOWED_CIDRS`` that would allow it."""
    policy = EgressPolicy(allowed_cidrs, https_only=https_only)
    problem = policy.validate_subscriber_url(url)
    if problem is None:
        return None
    host = url_host(url)
    if host is None:  # a malformed URL, not a refused address
        return problem
    address = parse_address(host)
    reason = policy.refusal_reason(address) if address is not None else None
    if address is None or reason is None:
        return problem
    allow = ",".join([*allowed_cidrs, _network_to_allow(allowed_cidrs, address)])
    if EgressPolicy(allow.split(","), https_only=https_only).validate_subscriber_url(url) is not None:
        return problem  # something besides the address is wrong with it
    shown = host if host == str(address) else f"{host} ({address})"
    return (
        f"{shown} is refused: {reason}; to allow it set OUTBOUND_ALLOWED_CIDRS={allow} "
        "(see README → Subscriptions and delivery)"
    )


def _network_to_allow(allowed_cidrs: tuple[str, ...], address: IPAddress) -> str:
    """The refused range ``address`` is in, or the address alone where allowing that range would
    not allow it (the allow list judges an IPv4 address embedded by NAT64 or 6to4 as IPv6)."""
    embedded = getattr(address, "ipv4_mapped", None) or address
    for network, _ in BLOCKED_NETWORKS:
        if embedded.version == network.version and embedded in network:
            if EgressPolicy([*allowed_cidrs, str(network)]).refusal_reason(address) is None:
                return str(network)
            break
    return f"{type(address)(int(address))}/{address.max_prefixlen}"  # without an IPv6 %zone
