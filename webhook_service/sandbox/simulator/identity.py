"""Identities, businesses and memberships: the three-identifier trap.

A business has an integer ``id`` (projects/time tracking URLs), an
``account_id`` string (accounting and events URLs) and a ``business_uuid``;
a membership has its own ``id`` that is none of them. A client-role
membership may show no ``account_id`` at all. Keeping these distinct here is
what lets the simulator answer a mixed-up identifier with FreshBooks' 404.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Business:
    """A FreshBooks business (one tenant of the service)."""

    id: int
    name: str
    business_uuid: str
    account_id: str | None = None
    date_format: str = "mm/dd/yyyy"

    def payload(self, *, show_account_id: bool = True) -> dict[str, Any]:
        """The ``business`` object nested in a users/me membership."""
        body: dict[str, Any] = {"id": self.id, "business_uuid": self.business_uuid, "name": self.name}
        if show_account_id and self.account_id is not None:
            body["account_id"] = self.account_id
        body["date_format"] = self.date_format
        body["active"] = True
        return body


@dataclass(slots=True)
class Membership:
    """One identity's role in one business.

    ``account_id`` is per membership: a client-role membership can lack it
    even where the business has one, and then the identity cannot reach that
    business's accounting endpoints.
    """

    id: int
    role: str
    business: Business
    account_id: str | None

    def payload(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "role": self.role,
            "business": self.business.payload(show_account_id=self.account_id is not None),
        }


@dataclass(slots=True)
class Identity:
    """A FreshBooks user who can authorize the app."""

    id: int
    first_name: str
    last_name: str
    email: str
    memberships: list[Membership] = field(default_factory=list)

    def business_by_account_id(self, account_id: str) -> Business | None:
        """The business this identity may address by ``account_id``, if any."""
        for membership in self.memberships:
            if membership.account_id is not None and membership.account_id == account_id:
                return membership.business
        return None

    def business_by_id(self, business_id: int) -> Business | None:
        """The business this identity may address by integer id, if any."""
        for membership in self.memberships:
            if membership.business.id == business_id:
                return membership.business
        return None

    def users_me(self) -> dict[str, Any]:
        """Body of ``GET /auth/api/v1/users/me``."""
        return {
            "response": {
                "id": self.id,
                "identity_id": self.id,
                "first_name": self.first_name,
                "last_name": self.last_name,
                "email": self.email,
                "language": "en",
                "confirmed_at": "2020-01-15T14:02:11Z",
                "business_memberships": [m.payload() for m in self.memberships],
            }
        }
