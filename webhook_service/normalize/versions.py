"""What identifies one state of a FreshBooks object: its ``updated`` stamp and a digest of its content.

FreshBooks stamps ``updated`` to the second, and real changes come faster than that (an invoice
created then sent, a payment that marks it paid): a stamp alone would call two states one version
and the second would never reach a subscriber. The digest covers the whole normalized object
(keys sorted, the catalogue's includes, every timestamp in UTC) except the fields the catalogue
lists as volatile, so any change is a new version, and one state is one version whichever way the
service saw it: a single GET after a webhook or a list page in the backfill (both ask for the same
includes and, in the simulator, answer the same object: ``tests/test_versions.py`` checks every
resource).

The stamp stays in front so the ledger stays readable. Versions are compared for equality only.
Changing what the digest covers changes every version: ship such a change with a migration that
rewrites the ledger from the emitted payloads (as ``0006`` does), or the next sweep re-emits every
object it finds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from webhook_service.core.jsontext import compact
from webhook_service.freshbooks.catalogue import Resource

GONE = "gone"
"""The version of an object FreshBooks no longer has (404)."""

DIGEST_CHARS = 32
"""128 bits of SHA-256, in hex: far beyond any chance of two states of one object colliding."""

NO_STAMP = "-"


def content_version(resource: Resource, normalized: Mapping[str, Any] | None) -> str:
    """``<updated stamp>|<digest>`` of a normalized object (see :func:`normalize_object`); ``gone`` for None.

    An object without an ``updated`` field (services) has ``-`` for its stamp: its content alone
    tells its states apart.
    """
    if normalized is None:
        return GONE
    stamp = normalized.get(resource.updated_field) if resource.updated_field else None
    content = normalized
    if resource.volatile_fields:
        content = {key: value for key, value in normalized.items() if key not in resource.volatile_fields}
    digest = hashlib.sha256(_canonical(content)).hexdigest()[:DIGEST_CHARS]
    return f"{stamp or NO_STAMP}|{digest}"


def _canonical(content: Mapping[str, Any]) -> bytes:
    """Compact JSON with every object's keys sorted, UTF-8."""
    return compact(content, sort_keys=True, default=str)


def stamp_version(resource: Resource, normalized: Mapping[str, Any] | None) -> str:
    """The scheme before ``0006`` (stamp and ``vis_state`` only), kept for that migration's downgrade."""
    if normalized is None:
        return GONE
    stamp = normalized.get(resource.updated_field) if resource.updated_field else None
    if not stamp:
        stamp = json.dumps(dict(normalized), sort_keys=True, default=str)[:100]
    return f"{stamp}|{normalized.get('vis_state', '')}"
