"""Times in and out: reading what operators type (ISO 8601 with an offset, or "how long ago": ``90m``,
``2h``, ``7d``), and the one way the service writes a UTC time."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """An aware UTC datetime; a zone-less ISO time is refused rather than guessed."""
    value = text.strip()
    relative = _RELATIVE.match(value)
    if relative:
        amount, unit = relative.groups()
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[unit]: int(amount)})
    try:
        moment = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value)
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (use ISO 8601 with an offset, e.g. 2026-11-21T10:00:00Z, or 2h)"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone; add Z or an offset such as +00:00")
    return moment.astimezone(UTC)


def isoformat_utc(moment: datetime) -> str:
    """``2026-11-21T15:04:05Z``: the one way the service writes a UTC time."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
