"""Which event types a subscription's patterns choose: ``*``, ``<noun>.*`` or an exact type.

``*`` means every FreshBooks event and never an operational one: a subscriber that asked for
everything before operational events existed is not sent events it cannot parse. Operational
events are chosen by name (``tenant.reauth_required``) or by noun (``tenant.*``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from webhook_service.contract.types import ALL_TYPES, is_operational

_PATTERN = re.compile(r"^(\*|[a-z0-9_]+\.\*|[a-z0-9_]+\.[a-z0-9_]+)$")
_NOUNS = frozenset(kind.split(".", 1)[0] for kind in ALL_TYPES)


def invalid_patterns(patterns: Iterable[str]) -> list[str]:
    """The patterns that are malformed or can never match a type the service emits."""
    return [p for p in patterns if not _PATTERN.fullmatch(p) or not _names_a_type(p)]


def _names_a_type(pattern: str) -> bool:
    if pattern == "*":
        return True
    noun, _, verb = pattern.partition(".")
    return noun in _NOUNS if verb == "*" else pattern in ALL_TYPES


def matches(patterns: Iterable[str], event_type: str) -> bool:
    noun = event_type.split(".", 1)[0]
    wildcard = not is_operational(event_type)
    return any((p == "*" and wildcard) or p == event_type or p == f"{noun}.*" for p in patterns)
