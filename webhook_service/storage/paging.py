"""Keyset paging: a page starts where the previous one ended, by (time, id), so each page reads
its own rows through an index, however deep into a million rows it is (an OFFSET would read and
throw away every row before it)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_
from sqlalchemy.sql.elements import ColumnElement

Position = tuple[datetime, str]
"""A row's place in its list: its time column and its id."""


def older_than(time: Any, row_id: Any, position: Position) -> ColumnElement[bool]:
    """The rows after ``position`` in a newest-first list (``ORDER BY time DESC, id DESC``)."""
    at, after_id = position
    return or_(time < at, and_(time == at, row_id < after_id))


def newer_than(time: Any, row_id: Any, position: Position) -> ColumnElement[bool]:
    """The rows after ``position`` in an oldest-first list (``ORDER BY time, id``)."""
    at, after_id = position
    return or_(time > at, and_(time == at, row_id > after_id))
