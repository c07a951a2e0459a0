"""FreshBooks OAuth 2.0: the authorize URL, the token endpoint, revocation and ``users/me``.

Stateless calls only; deciding *when* to refresh and storing the result is the token manager's job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import aiohttp

from webhook_service.config import Settings
from webhook_service.freshbooks.errors import FreshBooksError
from webhook_service.freshbooks.transport import TRANSPORT_ERRORS, Reply, send


@dataclass(frozen=True)
class TokenPair:
    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_at: datetime
    scopes: tuple[str, ...] = ()

    @classmethod
    def from_response(cls, body: dict[str, Any]) -> TokenPair:
        try:
            created = datetime.fromtimestamp(int(body.get("created_at") or 0), UTC)
            if created.timestamp() == 0:
                created = datetime.now(UTC)
            return cls(
                access_token=str(body["access_token"]),
                refresh_token=str(body["refresh_token"]),
                expires_at=created + timedelta(seconds=int(body["expires_in"])),
                scopes=tuple(str(body.get("scope") or "").split()),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FreshBooksError(200, "token response lacks access_token, refresh_token or expires_in") from exc


@dataclass(frozen=True)
class Membership:
    """One business an identity belongs to. ``account_id`` is None for client-role logins."""

    membership_id: int
    role: str
    business_id: int
    business_uuid: str | None
    name: str
    account_id: str | None

    @property
    def connectable(self) -> bool:
        return bool(self.account_id)


@dataclass(frozen=True)
class Identity:
    identity_id: int
    email: str | None
    memberships: tuple[Membership, ...]

    @classmethod
    def from_response(cls, body: dict[str, Any]) -> Identity:
        data = body.get("response", body)
        memberships = []
        for entry in data.get("business_memberships") or []:
            business = entry.get("business") or {}
            if "id" not in business:
                continue
            memberships.append(
                Membership(
                    membership_id=int(entry.get("id") or 0),
                    role=str(entry.get("role") or ""),
                    business_id=int(business["id"]),
                    business_uuid=business.get("business_uuid"),
                    name=str(business.get("name") or ""),
                    account_id=business.get("account_id") or None,
                )
            )
        identity_id = data.get("identity_id", data.get("id"))
        return cls(identity_id=int(identity_id or 0), email=data.get("email"), memberships=tuple(memberships))


class OAuthClient:
    """Talks to FreshBooks' token endpoint; never logs or returns a secret it does not have to."""

    def __init__(self, settings: Settings, http: aiohttp.ClientSession) -> None:
        self._settings = settings
        self._http = http

    def authorize_url(self, state: str) -> str:
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self._settings.freshbooks_client_id,
                "redirect_uri": self._settings.redirect_uri,
                "scope": " ".join(self._settings.scopes),
                "state": state,
            }
        )
        return f"{self._settings.freshbooks_auth_base}/oauth/authorize?{query}"

    async def exchange_code(self, code: str) -> TokenPair:
        return await self._token_request({"grant_type": "authorization_code", "code": code})

    async def refresh(self, refresh_token: str) -> TokenPair:
        return await self._token_request({"grant_type": "refresh_token", "refresh_token": refresh_token})

    async def revoke(self, token: str) -> None:
        response = await self._post("/auth/oauth/revoke", {"token": token})
        if response.status_code >= 400:
            raise FreshBooksError.from_response(response)

    async def identity(self, access_token: str) -> Identity:
        response = await self._send(
            "GET",
            "/auth/api/v1/users/me",
            headers={"Authorization": f"Bearer {access_token}"},
        )
        if response.status_code >= 400:
            raise FreshBooksError.from_response(response)
        return Identity.from_response(response.json())

    async def _token_request(self, grant: dict[str, str]) -> TokenPair:
        payload = {**grant, "redirect_uri": self._settings.redirect_uri}
        response = await self._post("/auth/oauth/token", payload)
        if response.status_code >= 400:
            raise FreshBooksError.from_response(response)
        try:
            body = response.json()
        except ValueError as exc:
            raise FreshBooksError(response.status_code, "token endpoint answered non-JSON") from exc
        return TokenPair.from_response(body)

    async def _post(self, path: str, payload: dict[str, str]) -> Reply:
        body = {
            "client_id": self._settings.freshbooks_client_id,
            "client_secret": self._settings.freshbooks_client_secret.get_secret_value(),
            **payload,
        }
        return await self._send("POST", path, json=body)

    async def _send(self, method: str, path: str, **kwargs: Any) -> Reply:
        try:
            return await send(self._http, method, f"{self._settings.freshbooks_api_base}{path}", **kwargs)
        except TRANSPORT_ERRORS as exc:
            raise FreshBooksError(0, f"could not reach FreshBooks: {type(exc).__name__}") from exc
