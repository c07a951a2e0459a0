"""FreshBooks' webhook callbacks API (``/events/account/{account_id}/events/callbacks``).

Reuses the catalogue's machinery (identifier injection, envelope, pages) through a :class:`Resource`
that is not an event noun and so is not in ``CATALOGUE``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from webhook_service.freshbooks.catalogue import Envelope, IdKind, Resource, UpdatedFilter
from webhook_service.freshbooks.client import FreshBooksClient, TenantRef
from webhook_service.freshbooks.errors import FreshBooksError
from webhook_service.freshbooks.timestamps import EASTERN, parse_timestamp

CALLBACKS = Resource(
    name="callback",
    list_path="/events/account/{account_id}/events/callbacks",
    item_path="/events/account/{account_id}/events/callbacks/{id}",
    id_kind=IdKind.ACCOUNT_ID,
    singular="callback",
    plural="callbacks",
    envelope=Envelope.ACCOUNTING,
    updated_field=None,
    updated_filter=UpdatedFilter.NONE,
)


@dataclass(frozen=True)
class RemoteCallback:
    callback_id: int
    event: str
    uri: str
    verified: bool
    updated_at: datetime | None

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> RemoteCallback:
        updated = data.get("updated_at")
        try:
            # seen both as ISO UTC and as zone-less US/Eastern
            updated_at = parse_timestamp(updated, EASTERN) if isinstance(updated, str) else None
        except ValueError:
            updated_at = None
        return cls(
            callback_id=int(data["callbackid"]),
            event=str(data.get("event", "")),
            uri=str(data.get("uri", "")),
            verified=bool(data.get("verified")),
            updated_at=updated_at.astimezone(UTC) if updated_at else None,
        )


class CallbacksAPI:
    def __init__(self, client: FreshBooksClient) -> None:
        self._client = client

    async def list_all(self, tenant: TenantRef) -> list[RemoteCallback]:
        found: list[RemoteCallback] = []
        async for page in self._client.pages(tenant, CALLBACKS):
            found.extend(RemoteCallback.from_api(item) for item in page.items)
        return found

    async def get(self, tenant: TenantRef, callback_id: int) -> RemoteCallback:
        return RemoteCallback.from_api(await self._client.get(tenant, CALLBACKS, callback_id))

    async def create(self, tenant: TenantRef, event: str, uri: str) -> RemoteCallback:
        body = await self._client.request(
            tenant, "POST", CALLBACKS.list_url(tenant), json={"callback": {"event": event, "uri": uri}}
        )
        return self._unwrap(body)

    async def verify(self, tenant: TenantRef, callback_id: int, verifier: str) -> RemoteCallback:
        return await self._put(tenant, callback_id, {"verifier": verifier})

    async def resend_verification(self, tenant: TenantRef, callback_id: int) -> RemoteCallback:
        return await self._put(tenant, callback_id, {"resend": True})

    async def delete(self, tenant: TenantRef, callback_id: int) -> None:
        await self._client.request(tenant, "DELETE", CALLBACKS.item_url(tenant, callback_id))

    async def _put(self, tenant: TenantRef, callback_id: int, fields: dict[str, Any]) -> RemoteCallback:
        body = await self._client.request(
            tenant, "PUT", CALLBACKS.item_url(tenant, callback_id), json={"callback": fields}
        )
        return self._unwrap(body)

    @staticmethod
    def _unwrap(body: Any) -> RemoteCallback:
        try:
            return RemoteCallback.from_api(CALLBACKS.unwrap_item(body))
        except (ValueError, KeyError, TypeError) as exc:
            raise FreshBooksError(200, f"unexpected callbacks response: {exc}") from exc
