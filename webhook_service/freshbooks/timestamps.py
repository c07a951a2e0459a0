"""FreshBooks timestamps to aware UTC datetimes.

Accounting sends zone-less ``YYYY-MM-DD HH:MM:SS`` in US/Eastern (DST included); projects and time
tracking send UTC, sometimes without the ``Z``. Guessing wrong shifts every event by 4-5 hours, so
each resource's zone comes from the catalogue, never from the string.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, tzinfo
from zoneinfo import ZoneInfo

from webhook_service.core.timeparse import isoformat_utc

__all__ = ["EASTERN", "eastern_date", "isoformat_utc", "parse_timestamp"]

EASTERN = ZoneInfo("America/New_York")


def parse_timestamp(value: str | None, zone: tzinfo) -> datetime | None:
    """Parse a FreshBooks timestamp; ``zone`` applies only when the string carries no offset."""
    if value is None or value == "":
        return None
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    return parsed.astimezone(UTC)


def eastern_date(moment: datetime) -> date:
    """The US/Eastern calendar day of an aware moment (what ``search[updated_min]`` compares)."""
    return moment.astimezone(EASTERN).date()
