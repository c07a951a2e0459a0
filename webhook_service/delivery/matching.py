"""Which subscriptions want an event: type filters ``*``, ``invoice.*`` or exact types."""

from __future__ import annotations

import re
from collections.abc import Iterable

_PATTERN = re.compile(r"^(\*|[a-z0-9_]+\.\*|[a-z0-9_]+\.[a-z0-9_]+)$")


def invalid_patterns(patterns: Iterable[str]) -> list[str]:
    return [p for p in patterns if not _PATTERN.fullmatch(p)]


def matches(patterns: Iterable[str], event_type: str) -> bool:
    noun = event_type.split(".", 1)[0]
    return any(p == "*" or p == event_type or p == f"{noun}.*" for p in patterns)
