"""FreshBooks pagination: forgiving in ways that trip up naive loops.

``per_page`` is silently capped at 100 (and the response says so), page 0 is
page 1, and a page past the end is an empty list rather than an error. A
client must drive its loop by ``page``/``pages``, never by "fewer rows than
asked".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.datastructures import QueryParams

DEFAULT_PER_PAGE = 15
MAX_PER_PAGE = 100

T = TypeVar("T")


def _int_param(query: QueryParams, name: str) -> int | None:
    raw = query.get(name)
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None  # FreshBooks shrugs at junk and uses its default


@dataclass(frozen=True, slots=True)
class Page:
    """The page a request asked for, after FreshBooks' normalisation."""

    number: int
    per_page: int

    @classmethod
    def from_query(cls, query: QueryParams) -> Page:
        per_page = _int_param(query, "per_page")
        per_page = DEFAULT_PER_PAGE if per_page is None or per_page < 1 else min(per_page, MAX_PER_PAGE)
        number = _int_param(query, "page")
        return cls(1 if number is None or number < 1 else number, per_page)

    def slice(self, items: list[T]) -> list[T]:
        start = (self.number - 1) * self.per_page
        return items[start : start + self.per_page]

    def meta(self, total: int) -> dict[str, Any]:
        pages = -(-total // self.per_page)  # ceil; 0 for an empty list
        return {"page": self.number, "pages": pages, "per_page": self.per_page, "total": total}
