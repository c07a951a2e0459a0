"""Webhook subscriptions ("callbacks"): what they are, which events exist, and validation.

A callback belongs to one business (addressed by its ``account_id``), names
an event (a bare noun such as ``invoice`` covers every ``invoice.*`` event)
and a URI, and carries its own verifier: the HMAC key for every delivery and
the code that must be PUT back before any event flows.

Harsher than documented where FreshBooks is silent: ``updated_at`` alternates
between ISO UTC and zone-less US/Eastern on every render (both have been seen
in the wild), so a client that parses only one format breaks at once rather
than some day in production. Not thread-safe by itself: ``SimulatorState``
holds the lock.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from .clock import eastern_naive, iso_utc

NOUNS = (
    "bill",
    "bill_vendor",
    "category",
    "client",
    "credit_note",
    "estimate",
    "expense",
    "invoice",
    "item",
    "payment",
    "project",
    "recurring",
    "service",
    "tax",
    "time_entry",
)
ACTIONS = ("create", "update", "delete")
EVENTS: frozenset[str] = frozenset(
    [
        *NOUNS,
        *(f"{noun}.{action}" for noun in NOUNS for action in ACTIONS),
        "invoice.sendByEmail",
        "estimate.sendByEmail",
    ]
)

FIRST_CALLBACK_ID = 778599
VERIFIER_ALPHABET = string.ascii_letters + string.digits
VERIFIER_LENGTH = 31


class CallbackError(ValueError):
    """A request FreshBooks refuses with 422: ``field`` and ``message`` go in the body."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def new_verifier() -> str:
    """A fresh random alphanumeric verifier (unpredictable, so never seeded)."""
    return "".join(secrets.choice(VERIFIER_ALPHABET) for _ in range(VERIFIER_LENGTH))


def event_noun(name: str) -> str:
    """``invoice.sendByEmail`` → ``invoice``; a bare noun is its own noun."""
    return name.split(".", 1)[0]


def check_event(value: Any) -> str:
    """The event if FreshBooks knows it; ``CallbackError`` otherwise (case matters)."""
    if value is None:
        raise CallbackError("event", "Field required.")
    if not isinstance(value, str) or value not in EVENTS:
        raise CallbackError("event", "Unrecognized event.")
    return value


def check_uri(value: Any) -> str:
    """An absolute http(s) URI with a host.

    Real FreshBooks surely wants a public HTTPS endpoint; plain ``http`` is
    accepted here only so tests can receive on 127.0.0.1.
    """
    if value is None:
        raise CallbackError("uri", "Field required.")
    if not isinstance(value, str):
        raise CallbackError("uri", "Invalid uri.")
    try:
        parts = urlsplit(value)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and value == value.strip()
    except ValueError:
        valid = False
    if not valid:
        raise CallbackError("uri", "Invalid uri.")
    return value


@dataclass(slots=True)
class Callback:
    """One subscription. ``verified`` is what gates deliveries."""

    id: int
    business_id: int
    account_id: str
    identity_id: int  # who created it: the ``user_id`` of its verification POST
    event: str
    uri: str
    verifier: str
    updated: datetime
    verified: bool = False
    failures: int = 0  # consecutive failed event deliveries

    def matches(self, name: str) -> bool:
        """Whether an event called ``name`` is delivered here (exact name or its bare noun)."""
        return self.event == name or self.event == event_noun(name)

    def reverify(self, now: datetime) -> None:
        """A new verifier, and no events until it is PUT back."""
        self.verifier = new_verifier()
        self.verified = False
        self.failures = 0
        self.updated = now

    def payload(self, *, eastern: bool) -> dict[str, Any]:
        """The FreshBooks ``callback`` object (the verifier is never shown)."""
        updated_at = eastern_naive(self.updated) if eastern else iso_utc(self.updated, suffix_z=True)
        return {
            "callbackid": self.id,
            "event": self.event,
            "uri": self.uri,
            "verified": self.verified,
            "updated_at": updated_at,
        }


class CallbackStore:
    """Callbacks by id (ids are global, not per business), and by business: a business's callbacks
    are found without looking at every other business's (thousands of businesses in a benchmark)."""

    def __init__(self) -> None:
        self._by_id: dict[int, Callback] = {}
        self._by_business: dict[int, dict[int, Callback]] = {}  # business id -> its callbacks by id
        self._next_id = FIRST_CALLBACK_ID
        self._renders = 0

    def add(self, business_id: int, account_id: str, identity_id: int, event: str, uri: str, now: datetime) -> Callback:
        callback = Callback(self._next_id, business_id, account_id, identity_id, event, uri, new_verifier(), now)
        self._next_id += 1
        self._by_id[callback.id] = callback
        self._by_business.setdefault(business_id, {})[callback.id] = callback
        return callback

    def get(self, callback_id: int, business_id: int | None = None) -> Callback | None:
        """The callback, if it exists (and belongs to ``business_id`` when given)."""
        callback = self._by_id.get(callback_id)
        if callback is None or (business_id is not None and callback.business_id != business_id):
            return None
        return callback

    def remove(self, callback_id: int) -> Callback | None:
        callback = self._by_id.pop(callback_id, None)
        if callback is not None:
            self._by_business.get(callback.business_id, {}).pop(callback_id, None)
        return callback

    def for_business(self, business_id: int) -> list[Callback]:
        """In id (creation) order."""
        return list(self._by_business.get(business_id, {}).values())

    def subscribers(self, business_id: int, name: str) -> list[Callback]:
        """Verified callbacks of the business that an event called ``name`` goes to."""
        return [c for c in self.for_business(business_id) if c.verified and c.matches(name)]

    def render(self, callback: Callback) -> dict[str, Any]:
        """The payload, ``updated_at`` format alternating from one render to the next."""
        self._renders += 1
        return callback.payload(eastern=self._renders % 2 == 0)
