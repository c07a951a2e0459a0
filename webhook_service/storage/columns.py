"""Column types shared by the tables."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.type_api import _BindProcessorType
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every backend.

    SQLite has no time zones and hands back naive values; storing naive UTC and re-attaching UTC on
    the way out keeps comparisons in Python and in SQL consistent.
    """

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else _in_utc(value).replace(tzinfo=None)

    def bind_processor(self, dialect: Dialect) -> _BindProcessorType[datetime] | None:
        """On SQLite, one function from the aware value to the stored text.

        SQLAlchemy otherwise chains :meth:`process_bind_param` and SQLite's ``DATETIME`` formatter
        (``%04d-%02d-%02d %02d:%02d:%02d.%06d`` from a dict of seven fields): about 4 µs a value,
        against 2 µs here, and an event writes some twenty of them (inbox, event, delivery, attempt).
        The text is the same, character for character (``tests/test_timestamps.py``).
        """
        if dialect.name == "sqlite":
            return _sqlite_text
        return super().bind_processor(dialect)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


def _in_utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive value is refused (its zone would be a guess)."""
    if value.tzinfo is UTC:
        return value
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    return value.astimezone(UTC)


_TEXTS: dict[datetime, str] = {}
"""The stored text of the UTC values written lately: a batch's rows share their ``now`` (each event
writes some fifteen values, three in four of them seen before in a ``serve`` burst), and a lookup
costs a tenth of formatting. Only values in ``UTC`` itself are kept, whose equality is their text's."""
_TEXTS_KEPT = 1024


def _sqlite_text(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is not UTC:
        return _in_utc(value).isoformat(" ", "microseconds")[:26]
    text = _TEXTS.get(value)
    if text is None:
        if len(_TEXTS) >= _TEXTS_KEPT:
            _TEXTS.clear()
        text = _TEXTS[value] = value.isoformat(" ", "microseconds")[:26]  # "+00:00" cut off: stored naive
    return text


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """Opaque, unguessable, prefixed ids (``ten_4f9c...``) that say what they name."""
    return f"{prefix}_{secrets.token_hex(10)}"


def time_ordered_id(prefix: str) -> str:
    """A prefixed id of 24 hex digits that begins with its creation time: the milliseconds since
    the Unix epoch (12 digits), then 48 random bits (12 digits), as UUIDv7 orders its bits.

    For the tables that take a row per event or delivery. Their ids are primary keys, and other
    tables' indexes hold them (a delivery's event, an attempt's delivery). A random key lands on a
    random page of each of those B-trees, so a commit of 32 events wrote some 32 pages per index,
    and more as the tables grew: at 100,000 rows the pipeline's writes took 350 µs of CPU an event
    in SQLite against 203 µs with keys that arrive in order, which land on the last few pages
    (``tests/benchmarks/bench_ids.py``). Two ids made in the same millisecond collide with a
    chance of one in 2**48; a collision fails its transaction (a primary key), so nothing is half
    written, and an inbox event whose commit failed is processed again later, with new ids.
    """
    return f"{prefix}_{time.time_ns() // 1_000_000:012x}{secrets.token_hex(6)}"
