"""The admin API's field types: limits, patterns and the annotated types its models are made of.

Each type carries its validation and its JSON Schema together, so the models in
:mod:`webhook_service.web.schemas` validate exactly what the OpenAPI document says they take.
"""

from __future__ import annotations

import re
from datetime import MAXYEAR, UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, PlainSerializer, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from webhook_service.contract.types import ALL_TYPES, FRESHBOOKS_NOUNS, OPERATIONAL_NOUNS

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_BODY_BYTES = 1024 * 1024
MAX_GRACE_HOURS = 168.0
"""The most ``SECRET_ROTATION_GRACE_HOURS`` allows (a week)."""

NO_NUL = "^[^\\u0000]*$"
"""Text the admin API stores or filters on must not contain NUL (PostgreSQL cannot store it)."""

URL_PATTERN = "^[Hh][Tt][Tt][Pp][Ss]?://"
EVENT_TYPE_PATTERN = (
    r"^(\*|("
    + "|".join(re.escape(noun) for noun in (*FRESHBOOKS_NOUNS, *OPERATIONAL_NOUNS))
    + r")\.\*|"
    + "|".join(re.escape(kind) for kind in ALL_TYPES)
    + ")$"
)
"""What ``delivery.subscriptions`` accepts: ``*``, ``<noun>.*``, or a type the service emits."""


def omittable(**constraints: Any) -> Any:
    """A field that may be left out (it is then ``None`` and not in ``model_fields_set``) but, unless
    its type says so, not sent as ``null``: the default is never validated, an explicit ``null`` is."""
    return Field(None, json_schema_extra=_no_default, **constraints)


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


# --- field types -------------------------------------------------------------------------------


def _rfc3339(value: object) -> datetime:
    """An RFC 3339 / ISO 8601 time with an offset or ``Z``, as an aware UTC datetime.

    A time without an offset is refused: guessing its zone would silently shift the window.
    """
    if not isinstance(value, str) or (match := _RFC3339.fullmatch(value)) is None:
        raise _not_a_time()
    text, leap = value.upper(), match["second"] == "60"
    if leap:  # 23:59:60 is the second after 23:59:59
        text = text[: match.start("second")] + "59" + text[match.end("second") :]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:  # no such date, or an offset of 24 hours or more
        raise _not_a_time() from None
    try:
        return (moment + timedelta(seconds=int(leap))).astimezone(UTC)
    except OverflowError:  # within a day of the ends of the calendar: as early or as late as can be
        return (datetime.max if moment.year == MAXYEAR else datetime.min).replace(tzinfo=UTC)


def _not_a_time() -> PydanticCustomError:
    return PydanticCustomError(
        "date_time", "must be an ISO 8601 time with an offset, like 2026-01-31T09:30:00Z or ...+01:00"
    )


def _digits(value: object) -> object:
    """A query's number as plain decimal digits (no sign, space, point or underscore)."""
    if isinstance(value, str) and not _SMALL_NUMBER.fullmatch(value):
        raise PydanticCustomError("int_parsing", "must be an integer written in decimal digits")
    return value


def _whole_number(value: object) -> object:
    """JSON Schema counts 5.0 as an integer, so this API does too."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:(?P<second>\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", re.ASCII)
_SMALL_NUMBER = re.compile(r"0*[0-9]{1,5}")
_DATE_TIME = {"type": "string", "format": "date-time"}

Time = Annotated[datetime, PlainSerializer(datetime.isoformat, return_type=str), WithJsonSchema(_DATE_TIME)]
"""An aware time in an answer, written by ``datetime.isoformat``."""
RequestTime = Annotated[datetime, PlainValidator(_rfc3339), WithJsonSchema(_DATE_TIME)]
Text = Annotated[str, Field(pattern=NO_NUL)]
RecordId = Annotated[str, Field(min_length=1, pattern=NO_NUL)]
Limit = Annotated[
    int, Field(ge=1, le=MAX_LIMIT, description="Most rows to return (newest first)."), BeforeValidator(_digits)
]
Url = Annotated[
    str,
    Field(
        pattern=URL_PATTERN,
        description="http(s) URL deliveries are POSTed to. No credentials in it; an IP literal in a private, "
        "loopback, link-local or other reserved range is refused unless OUTBOUND_ALLOWED_CIDRS allows it; "
        "plain http is refused when OUTBOUND_HTTPS_ONLY is set (422).",
    ),
]
RateLimit = Annotated[int, Field(ge=1, le=10_000), BeforeValidator(_whole_number)]

PATH_IDS = {
    "subscription_id": "A subscription id (sub_...).",
    "tenant_id": "A tenant id (ten_...).",
    "event_id": "An event id (evt_...).",
    "delivery_id": "A delivery id.",
    "job_id": "A backfill job id (bfj_...).",
    "type": "An event type (invoice.updated); GET /admin/v1/event-types lists them.",
}
"""Every id a path may hold (each a :data:`RecordId`), described."""
