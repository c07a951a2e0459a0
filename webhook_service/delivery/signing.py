"""Standard Webhooks signatures, with the ``standardwebhooks`` library.

The library signs what it is given; two traps are handled here: a timezone-aware non-UTC datetime
gives a wrong signature (so the timestamp is always UTC), and there is no multi-secret signing (so
during a rotation each secret signs and the signatures are joined with spaces).
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

SECRET_PREFIX = "whsec_"


def generate_secret() -> str:
    """``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def signature_header(secrets_: Sequence[str], message_id: str, timestamp: datetime, body: str) -> str:
    moment = timestamp.astimezone(UTC)
    return " ".join(Webhook(secret).sign(message_id, moment, body) for secret in secrets_)


def headers(secrets_: Sequence[str], message_id: str, timestamp: datetime, body: str) -> dict[str, str]:
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(timestamp.astimezone(UTC).timestamp())),
        "webhook-signature": signature_header(secrets_, message_id, timestamp, body),
    }
