"""Every event type the service publishes, and how FreshBooks' event names map onto them.

FreshBooks names verbs in the imperative and in camelCase (``invoice.sendByEmail``); subscribers
get the past tense in snake_case (``invoice.sent_by_email``), the Standard Webhooks convention.
Operational events (:mod:`~webhook_service.contract.operational`) describe the service's own state
under nouns FreshBooks does not use, so ``*`` can keep meaning "every FreshBooks event".
"""

from __future__ import annotations

import enum
import re

#: FreshBooks verb → normalized verb, where a rule would get the tense wrong.
KNOWN_VERBS = {
    "create": "created",
    "update": "updated",
    "delete": "deleted",
    "sendByEmail": "sent_by_email",
}
#: Verbs whose events describe a new version of the object (and so go through the version ledger);
#: any other verb is an action and is emitted every time it happens.
VERSION_VERBS = frozenset({"create", "update", "delete"})

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def event_type(freshbooks_name: str) -> str:
    """``invoice.update`` → ``invoice.updated``; ``invoice.sendByEmail`` → ``invoice.sent_by_email``."""
    noun, _, verb = freshbooks_name.partition(".")
    if not noun or not verb:
        raise ValueError(f"not a FreshBooks event name: {freshbooks_name!r}")
    return f"{noun}.{KNOWN_VERBS.get(verb) or _CAMEL.sub('_', verb).lower()}"


def split_name(freshbooks_name: str) -> tuple[str, str]:
    noun, _, verb = freshbooks_name.partition(".")
    return noun, verb


class EventOrigin(enum.StrEnum):
    """``data.origin``: how the service learned of the change."""

    WEBHOOK = "webhook"  # FreshBooks told us
    BACKFILL = "backfill"  # polling found it
    SERVICE = "service"  # an operational event: the service's own state


ORIGIN_WEBHOOK, ORIGIN_BACKFILL, ORIGIN_SERVICE = (origin.value for origin in EventOrigin)

#: The FreshBooks nouns the service normalizes (the keys of ``freshbooks.catalogue.CATALOGUE``,
#: which a test keeps equal) and the FreshBooks verbs each can be named with in a webhook.
FRESHBOOKS_NOUNS = (
    "invoice",
    "estimate",
    "credit_note",
    "recurring",
    "bill",
    "client",
    "expense",
    "payment",
    "item",
    "tax",
    "bill_vendor",
    "category",
    "project",
    "time_entry",
    "service",
)
FRESHBOOKS_VERBS: dict[str, tuple[str, ...]] = {
    noun: ("create", "update", "delete", *(("sendByEmail",) if noun in ("invoice", "estimate") else ()))
    for noun in FRESHBOOKS_NOUNS
}

#: Operational event types: the service's own state changes.
TENANT_REAUTH_REQUIRED = "tenant.reauth_required"
TENANT_RECONNECTED = "tenant.reconnected"
TENANT_DISCONNECTED = "tenant.disconnected"
SUBSCRIPTION_DISABLED = "subscription.disabled"
DELIVERY_DEAD = "delivery.dead"
CALLBACK_FAILED = "callback.failed"
CALLBACK_REPLACED = "callback.replaced"
BACKFILL_RECOVERED = "backfill.recovered"
OPERATIONAL_TYPES = (
    TENANT_REAUTH_REQUIRED,
    TENANT_RECONNECTED,
    TENANT_DISCONNECTED,
    SUBSCRIPTION_DISABLED,
    DELIVERY_DEAD,
    CALLBACK_FAILED,
    CALLBACK_REPLACED,
    BACKFILL_RECOVERED,
)
OPERATIONAL_NOUNS = tuple(dict.fromkeys(kind.split(".", 1)[0] for kind in OPERATIONAL_TYPES))

FRESHBOOKS_TYPES = tuple(event_type(f"{noun}.{verb}") for noun, verbs in FRESHBOOKS_VERBS.items() for verb in verbs)
ALL_TYPES = FRESHBOOKS_TYPES + OPERATIONAL_TYPES
"""Every type the service can emit, FreshBooks-derived first."""


def is_operational(kind: str) -> bool:
    return kind.split(".", 1)[0] in OPERATIONAL_NOUNS
