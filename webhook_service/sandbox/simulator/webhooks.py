"""Webhook policy: who gets which POST, signed how, and what a failure costs.

Decides everything about a delivery except sending it: verification
messages on create/resend/URI change, events to verified subscribers, the
seeded drop decision, the signature (with the callback's verifier *at send
time*), and auto-disable after consecutive failures. Lock-free like the other
helper stores; ``SimulatorState`` calls it with its lock held and hands the
resulting ``Delivery`` objects to the ``Dispatcher``.

Harsher readings of undocumented behaviour, on purpose:

* a resend or a URI change unverifies the callback: no events until the new
  verifier is PUT back;
* an event queued for a callback that is deleted, disabled or unverified
  before it goes out is never sent (nor logged);
* ``disable_after_failures`` consecutive failed *event* deliveries (non-2xx,
  redirects included, or no response) unverify the callback, as FreshBooks
  "may disable a callback whose URI keeps failing"; a dropped delivery is not
  a failure (the receiver never saw it) and a failed verification POST does
  not count (the callback is unverified already).
"""

from __future__ import annotations

import hmac
import random
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .callbacks import Callback, CallbackError, CallbackStore, check_event, check_uri
from .delivery import Delivery, DeliveryHold, Outcome
from .identity import Business
from .messages import event_message, verification_message
from .signing import sign


class Webhooks:
    """Callbacks plus the delivery knobs."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng  # seeded: field order and drop decisions are reproducible
        self.callbacks = CallbackStore()
        self.drop_rate = 0.0
        self.disable_after_failures: int | None = None

    # -- subscriptions ------------------------------------------------------------------

    def create(
        self, business: Business, identity_id: int, event: Any, uri: Any, now: datetime, hold: DeliveryHold | None
    ) -> tuple[Callback, list[Delivery]]:
        if business.account_id is None:
            raise KeyError(f"business {business.id} has no account_id, so no callbacks")
        event, uri = check_event(event), check_uri(uri)
        callback = self.callbacks.add(business.id, business.account_id, identity_id, event, uri, now)
        return callback, [self._verification(callback, business, hold)]

    def add_verified(self, business: Business, identity_id: int, event: Any, uri: Any, now: datetime) -> Callback:
        """A callback verified long ago (bulk set-up for load tests): no verification POST."""
        if business.account_id is None:
            raise KeyError(f"business {business.id} has no account_id, so no callbacks")
        event, uri = check_event(event), check_uri(uri)
        callback = self.callbacks.add(business.id, business.account_id, identity_id, event, uri, now)
        callback.verified = True
        return callback

    def verify(self, callback: Callback, verifier: Any, now: datetime) -> None:
        """Accept the current verifier; anything else is a 422 and changes nothing."""
        if not isinstance(verifier, str) or not hmac.compare_digest(
            verifier.encode("utf-8"), callback.verifier.encode("utf-8")
        ):
            raise CallbackError("verifier", "Invalid verifier.")
        if not callback.verified:
            callback.verified = True
            callback.failures = 0
            callback.updated = now

    def resend(
        self, callback: Callback, business: Business, now: datetime, hold: DeliveryHold | None
    ) -> list[Delivery]:
        callback.reverify(now)
        return [self._verification(callback, business, hold)]

    def update(
        self, callback: Callback, business: Business, event: Any, uri: Any, now: datetime, hold: DeliveryHold | None
    ) -> list[Delivery]:
        """Change event and/or URI (``None``: unchanged); validated before anything changes."""
        new_event = callback.event if event is None else check_event(event)
        new_uri = callback.uri if uri is None else check_uri(uri)
        if (new_event, new_uri) == (callback.event, callback.uri):
            return []
        callback.event = new_event
        callback.updated = now
        if new_uri == callback.uri:
            return []
        callback.uri = new_uri
        return self.resend(callback, business, now, hold)

    def disable(self, callback: Callback, now: datetime) -> None:
        if callback.verified:
            callback.verified = False
            callback.updated = now

    def _verification(self, callback: Callback, business: Business, hold: DeliveryHold | None) -> Delivery:
        """Never dropped, never signed: it *carries* the key."""
        message = verification_message(callback, business)
        return Delivery("verify", callback.id, message, uri=callback.uri, hold=hold)

    # -- events -----------------------------------------------------------------------------

    def event_deliveries(
        self,
        business: Business,
        name: str,
        object_id: int | str,
        identity_id: int,
        fields: Mapping[str, object] | None = None,
    ) -> list[Delivery]:
        """One delivery per verified subscriber, each with its own field order."""
        deliveries = []
        for callback in self.callbacks.subscribers(business.id, name):
            message = event_message(name, object_id, business, identity_id, fields, self.rng)
            dropped = self.drop_rate > 0 and self.rng.random() < self.drop_rate
            deliveries.append(Delivery("event", callback.id, message, dropped=dropped))
        return deliveries

    # -- dispatcher hooks (lock held) -----------------------------------------------------------

    def prepare(self, delivery: Delivery) -> Delivery | None:
        """Fill in an event's URI and signature from the callback as it is now; ``None``: skip."""
        callback = self.callbacks.get(delivery.callback_id)
        if callback is None:
            return None
        if delivery.kind == "event":
            if not callback.verified:
                return None
            delivery.uri = callback.uri
            delivery.signature = sign(callback.verifier, delivery.message)
        return delivery

    def finish(self, delivery: Delivery, outcome: Outcome, now: datetime) -> dict[str, Any]:
        """Count failures (maybe disabling the callback) and return the log entry."""
        callback = self.callbacks.get(delivery.callback_id)
        if delivery.kind == "event" and not delivery.dropped and callback is not None:
            if outcome.ok:
                callback.failures = 0
            else:
                callback.failures += 1
                limit = self.disable_after_failures
                if limit is not None and callback.failures >= limit:
                    self.disable(callback, now)
        return {
            "kind": delivery.kind,
            "callback_id": delivery.callback_id,
            "uri": delivery.uri,
            "body": delivery.body.decode("ascii"),
            "signature": delivery.signature,
            "fields": {key: str(value) for key, value in delivery.message.items()},
            "status": outcome.status,
            "dropped": delivery.dropped,
            "error": outcome.error,
            "time": delivery.started,
        }
