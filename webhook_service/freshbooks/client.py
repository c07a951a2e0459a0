"""The FreshBooks API client: one pooled HTTP session (:mod:`.transport`), the catalogue, tokens, retries.

Callers name a tenant and a resource; the client builds the path with the right identifier, adds the
catalogue's ``include[]`` values, authenticates (one refresh and one retry on a 401), waits as told
on 429 and 5xx, limits concurrent calls per tenant, and walks every page.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Protocol, TypedDict, TypeVar, Unpack
from urllib.parse import urlsplit

import aiohttp

from webhook_service.config import Settings
from webhook_service.core.logs import get_logger
from webhook_service.core.pacing import Pace
from webhook_service.core.retry_after import parse_retry_after
from webhook_service.freshbooks.catalogue import BusinessRef, Page, Resource, get_resource
from webhook_service.freshbooks.errors import RETRYABLE_STATUSES, FreshBooksError
from webhook_service.freshbooks.tokens import TokenManager
from webhook_service.freshbooks.transport import TRANSPORT_ERRORS, Reply, send

log = get_logger(__name__)

#: FreshBooks silently caps ``per_page`` at 100; asking for more only hides the cap.
MAX_PER_PAGE = 100
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})

Params = Sequence[tuple[str, str | int]]
T = TypeVar("T")


class Listing(TypedDict, total=False):
    """The options of :meth:`FreshBooksClient.pages`, which :meth:`FreshBooksClient.iterate` passes on."""

    updated_since: datetime | None
    per_page: int
    params: Params


class TenantRef(BusinessRef, Protocol):
    id: str


class FreshBooksClient:
    def __init__(
        self,
        settings: Settings,
        http: aiohttp.ClientSession,
        tokens: TokenManager,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        pace: Pace | None = None,
    ) -> None:
        self._settings = settings
        self._http = http
        self._tokens = tokens
        self._sleep = sleep
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._pace = pace or Pace(sleep)

    # -- resources ------------------------------------------------------------------------------
    async def get(
        self, tenant: TenantRef, resource: str | Resource, object_id: int | str, *, deadline: float | None = None
    ) -> dict[str, Any]:
        """One object with the catalogue's includes (an invoice with its lines); see :meth:`request`
        for ``deadline``."""
        spec = _spec(resource)
        body = await self.request(tenant, "GET", spec.item_url_with_includes(tenant, object_id), deadline=deadline)
        return _unwrap(spec.unwrap_item, body)

    async def list_page(
        self,
        tenant: TenantRef,
        resource: str | Resource,
        *,
        page: int = 1,
        per_page: int = MAX_PER_PAGE,
        params: Params = (),
    ) -> Page:
        spec = _spec(resource)
        query: list[tuple[str, str | int]] = [
            ("page", max(page, 1)),
            ("per_page", min(max(per_page, 1), MAX_PER_PAGE)),
            *spec.include_params(),
            *params,
        ]
        body = await self.request(tenant, "GET", spec.list_url(tenant), params=query)
        return _unwrap(spec.unwrap_page, body)

    async def iterate(
        self, tenant: TenantRef, resource: str | Resource, **options: Unpack[Listing]
    ) -> AsyncIterator[dict[str, Any]]:
        """Every object (deleted and archived included) of :meth:`pages`, one at a time."""
        async for page in self.pages(tenant, resource, **options):
            for item in page.items:
                yield item

    async def pages(
        self,
        tenant: TenantRef,
        resource: str | Resource,
        *,
        updated_since: datetime | None = None,
        per_page: int = MAX_PER_PAGE,
        params: Params = (),
    ) -> AsyncIterator[Page]:
        """Every page of the listing (deleted and archived objects included), fetched as it is read.

        With ``updated_since`` the server filter is applied (a day wider where FreshBooks is
        day-granular) and objects older than ``updated_since`` are dropped here.
        """
        spec = _spec(resource)
        query = list(params)
        if updated_since is not None:
            query.extend(spec.updated_since_params(updated_since))
        number = 1
        while True:
            page = await self.list_page(tenant, spec, page=number, per_page=per_page, params=query)
            if updated_since is not None:
                page = _keep_updated_since(spec, page, updated_since)
            yield page
            if number >= page.pages:
                return
            number += 1

    # -- transport ------------------------------------------------------------------------------
    async def request(
        self,
        tenant: TenantRef,
        method: str,
        path: str,
        *,
        params: Params = (),
        json: Any = None,
        deadline: float | None = None,
    ) -> Any:
        """An authenticated call for ``tenant``; returns the decoded JSON body (None for 204).

        ``deadline`` (the event loop's clock): the whole call, retries and ``Retry-After`` waits
        included, ends by then or fails with status 0, so work done under a lease never outlives
        it. Only for calls safe to abandon (a GET); a token refresh it triggers is not abandoned.
        """
        if deadline is None:
            return await self._request(tenant, method, path, params=params, json=json)
        try:
            async with asyncio.timeout_at(deadline):
                return await self._request(tenant, method, path, params=params, json=json)
        except TimeoutError as exc:
            raise FreshBooksError(0, "FreshBooks did not answer within the time left to this work") from exc

    async def _request(self, tenant: TenantRef, method: str, path: str, *, params: Params, json: Any) -> Any:
        url = f"{self._settings.freshbooks_api_base}{path}"
        async with self._slot(tenant.id):
            token = await self._tokens.access_token(tenant.id)
            # a duty's request waits for the tenant's turn (after the token: a refresh it waited
            # for must not squeeze two sends together)
            await self._pace.turn(tenant.id)
            response = await self._send_with_retries(method, url, token.token, params, json)
            if response.status_code == 401:
                log.info("freshbooks_401_refreshing", tenant_id=tenant.id, token_version=token.version)
                token = await self._tokens.refresh(tenant.id, stale_version=token.version)
                response = await self._send_with_retries(method, url, token.token, params, json)
        if response.status_code >= 400:
            raise FreshBooksError.from_response(response)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise FreshBooksError(response.status_code, "FreshBooks answered non-JSON") from exc

    def _slot(self, tenant_id: str) -> asyncio.Semaphore:
        slot = self._slots.get(tenant_id)
        if slot is None:
            slot = self._slots[tenant_id] = asyncio.Semaphore(self._settings.freshbooks_concurrency_per_tenant)
        return slot

    async def _send_with_retries(self, method: str, url: str, access_token: str, params: Params, json: Any) -> Reply:
        attempts = self._settings.freshbooks_max_attempts
        for attempt in range(1, attempts + 1):
            started = time.perf_counter()
            try:
                response = await send(
                    self._http,
                    method,
                    url,
                    params=params,
                    json=json,
                    headers={"Authorization": f"Bearer {access_token}"},
                )
            except TRANSPORT_ERRORS as exc:
                _log_sent(method, url, attempt, started, error=type(exc).__name__)
                if method not in _IDEMPOTENT or attempt == attempts:
                    raise FreshBooksError(0, f"could not reach FreshBooks: {type(exc).__name__}") from exc
                delay = self._backoff(attempt)
                log.warning(
                    "freshbooks_transport_retry", method=method, attempt=attempt, delay=delay, error=type(exc).__name__
                )
            else:
                _log_sent(method, url, attempt, started, status=response.status_code)
                if response.status_code not in RETRYABLE_STATUSES or attempt == attempts:
                    return response
                delay = self._retry_delay(response, attempt)
                log.warning(
                    "freshbooks_retry",
                    method=method,
                    status=response.status_code,
                    attempt=attempt,
                    delay=round(delay, 3),
                )
            await self._sleep(delay)
        raise AssertionError("unreachable")

    def _retry_delay(self, response: Reply, attempt: int) -> float:
        told = parse_retry_after(response.headers.get("Retry-After"))
        if told is not None:
            return min(told, self._settings.freshbooks_max_retry_wait)
        return self._backoff(attempt)

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter: 0.5 s, 1 s, 2 s ... capped at 30 s."""
        ceiling = min(30.0, 0.5 * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


def _spec(resource: str | Resource) -> Resource:
    return resource if isinstance(resource, Resource) else get_resource(resource)


def _unwrap(unwrap: Callable[[Any], T], body: Any) -> T:
    """``unwrap(body)``; a body that is not the shape the catalogue expects is FreshBooks' error
    (reported with the 200 it came with), not a bug of ours."""
    try:
        return unwrap(body)
    except ValueError as exc:
        raise FreshBooksError(200, str(exc)) from exc


def _log_sent(method: str, url: str, attempt: int, started: float, **outcome: int | str) -> None:
    """One debug line per request sent (each attempt): the path without its query string, never a
    token or a body. ``outcome``: the ``status``, or the transport ``error``. Below ``LOG_LEVEL``
    it costs a level check: the line's fields are not even worked out (one per FreshBooks request)."""
    if not log.is_enabled_for(logging.DEBUG):
        return
    log.debug(
        "freshbooks_request",
        method=method,
        path=urlsplit(url).path,
        attempt=attempt,
        duration_ms=round((time.perf_counter() - started) * 1000, 2),
        **outcome,
    )


def _keep_updated_since(spec: Resource, page: Page, since: datetime) -> Page:
    kept = []
    for item in page.items:
        updated = spec.updated_at(item)
        if updated is None or updated >= since:
            kept.append(item)
    return Page(items=kept, page=page.page, pages=page.pages, per_page=page.per_page, total=page.total)
