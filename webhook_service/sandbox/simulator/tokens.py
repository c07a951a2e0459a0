"""OAuth grants, codes and tokens, with FreshBooks' single-use refresh tokens.

Not thread-safe by itself: ``SimulatorState`` calls it under its lock, which
is what makes "two concurrent refreshes with one token: exactly one wins" hold.

Rules (documented, plus the harsher choices where FreshBooks is silent):

* a refresh token works once; the successful refresh returns a new one and
  the old one is dead at once (documented);
* a refresh also kills the grant's earlier access tokens (harsher: a service
  must switch to the new access token immediately);
* an authorization code works once, for 5 minutes, only with the exact
  ``redirect_uri`` it was issued for; any presentation consumes it, even a
  failed one (harsher);
* revoking any token of a grant revokes the whole grant.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

CODE_TTL_SECONDS = 300

DEFAULT_SCOPES = (
    "user:profile:read",
    "user:invoices:read",
    "user:clients:read",
    "user:expenses:read",
    "user:payments:read",
    "user:estimates:read",
    "user:credit_notes:read",
    "user:bills:read",
    "user:bill_vendors:read",
    "user:taxes:read",
    "user:projects:read",
    "user:time_entries:read",
    "user:billable_items:read",
    "user:other_income:read",
)
DEFAULT_SCOPE = " ".join(DEFAULT_SCOPES)


class OAuthError(Exception):
    """An OAuth error response: HTTP status, ``error`` code and description."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.status = status
        self.error = error
        self.description = description

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


@dataclass(slots=True)
class Grant:
    """One authorization of the app by one identity; tokens rotate within it."""

    id: int
    identity_id: int
    scope: str
    revoked: bool = False
    access_tokens: set[str] = field(default_factory=set)
    refresh_tokens: set[str] = field(default_factory=set)


@dataclass(slots=True)
class AccessToken:
    grant_id: int
    expires_at: float  # unix seconds
    dead: bool = False  # expired by the test API, rotated away or revoked


@dataclass(slots=True)
class RefreshToken:
    grant_id: int
    used: bool = False


@dataclass(slots=True)
class AuthorizationCode:
    identity_id: int
    redirect_uri: str
    scope: str
    expires_at: float
    used: bool = False


class TokenStore:
    """Everything OAuth; the clock is unix seconds (``time.time`` by default)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.access_token_ttl = 43200
        self._grants: dict[int, Grant] = {}
        self._access: dict[str, AccessToken] = {}
        self._refresh: dict[str, RefreshToken] = {}
        self._codes: dict[str, AuthorizationCode] = {}
        self._next_grant_id = 1

    # -- minting -------------------------------------------------------------

    def new_grant(self, identity_id: int, scope: str | None = None) -> Grant:
        grant = Grant(self._next_grant_id, identity_id, scope or DEFAULT_SCOPE)
        self._next_grant_id += 1
        self._grants[grant.id] = grant
        return grant

    def mint_refresh_token(self, grant: Grant) -> str:
        token = secrets.token_hex(32)
        self._refresh[token] = RefreshToken(grant.id)
        grant.refresh_tokens.add(token)
        return token

    def grant_pair(self, grant: Grant) -> dict[str, Any]:
        """A live access + refresh pair for ``grant``, as the token endpoint would answer it."""
        return self._token_response(grant)

    def mint_code(self, identity_id: int, redirect_uri: str, scope: str | None) -> str:
        code = secrets.token_hex(20)
        self._codes[code] = AuthorizationCode(
            identity_id, redirect_uri, scope or DEFAULT_SCOPE, self.clock() + CODE_TTL_SECONDS
        )
        return code

    def _token_response(self, grant: Grant) -> dict[str, Any]:
        """Issue an access + refresh pair for ``grant`` in FreshBooks' shape."""
        created_at = int(self.clock())
        access = secrets.token_hex(32)
        # Expiry counts from the *reported* created_at, so a client computing
        # created_at + expires_in is never later than the simulator.
        self._access[access] = AccessToken(grant.id, created_at + self.access_token_ttl)
        grant.access_tokens.add(access)
        return {
            "access_token": access,
            "refresh_token": self.mint_refresh_token(grant),
            "token_type": "Bearer",
            "expires_in": self.access_token_ttl,
            "scope": grant.scope,
            "created_at": created_at,
        }

    # -- grants ----------------------------------------------------------------

    def exchange_code(self, code: str | None, redirect_uri: str | None) -> dict[str, Any]:
        if not code:
            raise OAuthError(400, "invalid_request", "Missing required parameter: code.")
        record = self._codes.get(code)
        invalid = OAuthError(
            400,
            "invalid_grant",
            "The provided authorization grant is invalid, expired, revoked, does not match the "
            "redirection URI used in the authorization request, or was issued to another client.",
        )
        if record is None or record.used:
            raise invalid
        record.used = True  # consumed by any presentation, successful or not
        if self.clock() >= record.expires_at or redirect_uri != record.redirect_uri:
            raise invalid
        return self._token_response(self.new_grant(record.identity_id, record.scope))

    def refresh(self, refresh_token: str | None) -> dict[str, Any]:
        if not refresh_token:
            raise OAuthError(400, "invalid_request", "Missing required parameter: refresh_token.")
        record = self._refresh.get(refresh_token)
        if record is None or record.used or self._grants[record.grant_id].revoked:
            raise OAuthError(
                400,
                "invalid_grant",
                "The provided authorization grant is invalid, expired, revoked, does not match the "
                "redirection URI used in the authorization request, or was issued to another client.",
            )
        record.used = True
        grant = self._grants[record.grant_id]
        for access in grant.access_tokens:
            self._access[access].dead = True
        grant.access_tokens.clear()
        return self._token_response(grant)

    def revoke(self, token: str) -> bool:
        """Revoke the grant ``token`` belongs to; ``False`` if it is unknown."""
        record = self._refresh.get(token) or self._access.get(token)
        if record is None:
            return False
        grant = self._grants[record.grant_id]
        grant.revoked = True
        for access in grant.access_tokens:
            self._access[access].dead = True
        return True

    # -- use -----------------------------------------------------------------

    def identity_for_access_token(self, token: str) -> int:
        """The identity an access token acts for; ``OAuthError`` 401 otherwise."""
        record = self._access.get(token)
        if record is None:
            raise OAuthError(401, "unauthenticated", "The access token is invalid.")
        grant = self._grants[record.grant_id]
        if grant.revoked:
            raise OAuthError(401, "unauthenticated", "The access token was revoked.")
        if record.dead or self.clock() >= record.expires_at:
            raise OAuthError(401, "unauthenticated", "The access token expired.")
        return grant.identity_id

    def expire_access_tokens(self, identity_id: int | None = None) -> int:
        """Kill every live access token (of one identity); returns how many."""
        count = 0
        for record in self._access.values():
            if record.dead:
                continue
            if identity_id is None or self._grants[record.grant_id].identity_id == identity_id:
                record.dead = True
                count += 1
        return count
