"""Which rows a claim may take, as the predicates of the partial indexes the claims walk.

The claims (``storage/deliveries.py``) state these predicates word for word: a database uses a
partial index only for a query it can prove stays within it, and SQLite proves it from the
statement's text. On SQLite the status is tested as ``+status``, which keeps its planner (without
statistics) off the status indexes, so a claim walks the partial index in its own order instead of
reading and sorting every due row.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text


def _due_rows(sqlite: str, postgresql: str) -> dict[str, Any]:
    return {"sqlite_where": text(sqlite), "postgresql_where": text(postgresql)}


INBOX_DUE_ROWS = _due_rows(
    "+status = 'pending' OR +status = 'duplicate' AND processed_at IS NULL AND next_attempt_at IS NOT NULL",
    "status = 'pending' OR status = 'duplicate' AND processed_at IS NULL AND next_attempt_at IS NOT NULL",
)
"""The inbox rows a claim may take: pending, or a duplicate awaiting its recheck."""
DELIVERY_DUE_ROWS = _due_rows("+status IN ('pending', 'failed')", "status IN ('pending', 'failed')")
"""The deliveries still to send (now or at their next attempt), as a partial index's predicate."""
