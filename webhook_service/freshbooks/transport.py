"""HTTP to FreshBooks: one pooled aiohttp session, each answer read whole and the connection let go.

The API client and the token endpoint's client both send through :func:`send`. It was httpx over
aiohttp's transport (``httpx-aiohttp``); measured on the 2-core VM, a request cost 580 µs of CPU
that way and 150 µs on aiohttp alone (httpx builds and parses its own URL and request, keeps a
cookie jar, then hands everything to aiohttp), and a worker makes one such request per event.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from webhook_service import __version__
from webhook_service.config import Settings

TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, OSError, TimeoutError)
"""What a request that got no answer raises: the connection refused or dropped, a timeout."""

CONNECT_SECONDS = 10.0
MAX_CONNECTIONS = 100


@dataclass(frozen=True)
class Reply:
    """A FreshBooks answer, read whole (the names are httpx's, which callers used before)."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes
    reason_phrase: str

    def json(self) -> Any:
        """The body as JSON; ``ValueError`` when it is not."""
        return orjson.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


def session(settings: Settings) -> aiohttp.ClientSession:
    """The process's session to FreshBooks; create it in a running loop, close it at the end.

    ``FRESHBOOKS_TIMEOUT`` bounds getting a connection from the pool and each read, a new
    connection gets 10 s; no cookies (nothing of one tenant's answers reaches another's requests).
    The proxy is ``FRESHBOOKS_PROXY``, not the environment's: with ``trust_env`` aiohttp looks up
    ``.netrc`` on a thread and the proxy variables for every request, 0.4 ms of CPU each.
    """
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS),
        timeout=aiohttp.ClientTimeout(
            total=None,
            connect=settings.freshbooks_timeout,
            sock_connect=CONNECT_SECONDS,
            sock_read=settings.freshbooks_timeout,
        ),
        headers={"User-Agent": f"webhook-service/{__version__}"},
        cookie_jar=aiohttp.DummyCookieJar(),
        proxy=settings.freshbooks_proxy or None,
    )


async def send(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    params: Sequence[tuple[str, str | int]] = (),
    json: Any = None,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """One request, redirects never followed; raises one of :data:`TRANSPORT_ERRORS` when no answer came."""
    async with http.request(
        method, url, params=list(params) or None, json=json, headers=headers, allow_redirects=False
    ) as response:
        content = await response.read()
    return Reply(response.status, response.headers, content, response.reason or "")
