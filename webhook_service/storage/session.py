"""What code outside storage needs to hold a transaction without speaking SQL.

A stage opens a session (``db.sessions()``), hands it to storage functions, and commits it; the
type is named here so that it never imports SQLAlchemy for a type hint. Where another process's
write can collide with one of ours (a version already emitted, an attempt already recorded), the
storage function that writes raises :class:`Conflict` in place of the driver's error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

Session = AsyncSession
"""One transaction's session, as ``Database.sessions()`` hands it out."""


class Conflict(Exception):
    """A write collided with a row that is already there (a unique or foreign key constraint).

    The transaction is spoiled: roll it back (leave the session) and, if it carried several
    items, try them one at a time to find the one at fault. The driver's ``IntegrityError`` is
    the ``__cause__``.
    """


@contextmanager
def conflicts() -> Iterator[None]:
    """Inside storage: turn a constraint violation of the enclosed writes into :class:`Conflict`."""
    try:
        yield
    except IntegrityError as error:
        raise Conflict(str(error)) from error
