"""Time formats FreshBooks uses, in one place.

FreshBooks mixes three conventions and a service that confuses them loses or
duplicates data at day boundaries:

* accounting ``updated`` / ``created_at``: zone-less ``YYYY-MM-DD HH:MM:SS``
  in US/Eastern (DST-aware), with day-granular ``search[updated_min|max]``;
* a few accounting fields (client ``signup_date``): zone-less UTC;
* projects / time tracking: ISO 8601 UTC, projects *without* the ``Z``.

Everything is stored as an aware UTC ``datetime`` truncated to whole seconds
(what the API shows is all a client can know) and rendered on write.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

EASTERN = ZoneInfo("America/New_York")


def utc_now() -> datetime:
    """The real clock, the default for ``SimulatorState.now``."""
    return datetime.now(UTC)


def normalize(moment: datetime) -> datetime:
    """Return ``moment`` in UTC, whole seconds; refuse naive datetimes.

    A naive datetime is ambiguous (which zone?) and is exactly the kind of
    mistake the simulator exists to surface, so it raises instead of guessing.
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("simulator clocks must return timezone-aware datetimes")
    return moment.astimezone(UTC).replace(microsecond=0)


def eastern_naive(moment: datetime) -> str:
    """Accounting style: zone-less US/Eastern ``YYYY-MM-DD HH:MM:SS``."""
    return moment.astimezone(EASTERN).strftime("%Y-%m-%d %H:%M:%S")


def eastern_date(moment: datetime) -> date:
    """The US/Eastern calendar day, which ``search[updated_min]`` compares."""
    return moment.astimezone(EASTERN).date()


def utc_naive(moment: datetime) -> str:
    """Zone-less UTC ``YYYY-MM-DD HH:MM:SS`` (client ``signup_date``)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def iso_utc(moment: datetime, *, suffix_z: bool) -> str:
    """ISO 8601 UTC to the second, with or without the trailing ``Z``."""
    text = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return text + "Z" if suffix_z else text


def parse_iso_utc(text: str) -> datetime:
    """Parse an ``updated_since`` value; zone-less input is taken as UTC.

    Raises ``ValueError`` on anything ``datetime.fromisoformat`` rejects.
    """
    moment = datetime.fromisoformat(text.strip().replace(" ", "T"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def parse_day(text: str) -> date:
    """Parse a ``search[updated_min|max]`` value to a calendar day.

    Only the date part counts (the filter is day-granular); a time part, if a
    client sends one, is ignored rather than honoured.
    """
    return date.fromisoformat(text.strip()[:10])
