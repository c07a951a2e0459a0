"""The form fields FreshBooks POSTs: the verification message and event messages.

Both carry ids only (no object data), every value as a string. The
verification keeps the documented field order; events come in a random order
per delivery because FreshBooks' own order "differs between messages and over
time": a receiver that rebuilds the signed JSON in any fixed order fails on
most deliveries instead of on some.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping

from .callbacks import Callback
from .identity import Business

VERIFY_EVENT = "callback.verify"
BUSINESS_USER_ID = "1"  # the acting user's id inside the business; 1 is its first user (the owner)


def system_url(business: Business) -> str:
    """The ``system`` field: the business's FreshBooks subdomain."""
    slug = re.sub(r"[^a-z0-9]", "", business.name.lower()) or f"business{business.id}"
    return f"https://{slug}.freshbooks.com"


def verification_message(callback: Callback, business: Business) -> dict[str, object]:
    """``user_id, name, verifier, object_id, account_id, system``, in that order.

    ``object_id`` is the callback id the verifier must be PUT back to.
    """
    return {
        "user_id": str(callback.identity_id),
        "name": VERIFY_EVENT,
        "verifier": callback.verifier,
        "object_id": str(callback.id),
        "account_id": callback.account_id,
        "system": system_url(business),
    }


def event_message(
    name: str,
    object_id: int | str,
    business: Business,
    identity_id: int,
    fields: Mapping[str, object] | None,
    rng: random.Random,
) -> dict[str, object]:
    """The six event fields (``fields`` added or overriding), shuffled with ``rng``.

    Values in ``fields`` are kept as given: the signature and the form body
    both pass them through ``str``, exactly as FreshBooks' sender code does.
    """
    assert business.account_id is not None  # only businesses with an account_id have callbacks
    message: dict[str, object] = {
        "name": name,
        "object_id": str(object_id),
        "account_id": business.account_id,
        "business_id": str(business.id),
        "identity_id": str(identity_id),
        "user_id": BUSINESS_USER_ID,
    }
    message.update(fields or {})
    keys = list(message)
    rng.shuffle(keys)
    return {key: message[key] for key in keys}
