"""Egress safety (SSRF): subscriber URLs come from customers and must never reach our own network.

The check that matters happens at connect time, after DNS resolution: a name that resolved to a
public address when the subscription was saved can resolve to ``10.0.0.1`` or to the cloud metadata
service a minute later (DNS rebinding). So :class:`GuardedResolver` resolves the host itself,
checks every address, and hands aiohttp only the addresses it checked: aiohttp connects to those,
never re-resolving the name. Saving a subscription only gets the cheap checks
(:meth:`EgressPolicy.validate_subscriber_url`).

Layers, from the outside in (see :func:`guarded_session`)::

    policy.check_request_target(url)         the caller, before every request: URL checks (scheme,
                                             https-only, userinfo, host) and an IP-literal host
    aiohttp.ClientSession                    no proxies (trust_env=False), no cookies
      -> GuardedConnector.connect            the same checks again on the URL aiohttp connects to,
                                             for every request, whoever sends it
        -> aiohttp.TCPConnector pool         kept-alive connections were checked when opened
          -> GuardedResolver.resolve         DNS names: resolve, check every address, return those
            -> the socket                    to one of the checked addresses

aiohttp never calls the resolver for an IP-literal host (``http://10.0.0.1/``), which is why the
URL-level check exists and runs on every request.

Refusals are :class:`EgressBlocked`, a ``ConnectionError`` (so an ``OSError``). Raised by the
resolver, aiohttp wraps it in ``aiohttp.ClientConnectorDNSError`` (``ClientConnectorError`` before
3.11); raised by the connector, in ``aiohttp.ClientOSError``; either way with the refusal as
``__cause__``. Callers treat all of them like an unreachable host and tell a refusal from a network
failure with :func:`egress_refusal`.

The decisions themselves are made elsewhere, so that this module is only the plumbing that applies
them: the address tables and what counts as an address in :mod:`webhook_service.core.addresses`,
the policy (URL checks, allow list, :class:`EgressBlocked`) in :mod:`webhook_service.core.egress_policy`.
Every name callers use stays importable from here.

Written against aiohttp 3.14 (see :class:`GuardedConnector` and :func:`guarded_session` for the
internals used); the public pieces it needs (``AbstractResolver``, ``ResolveResult``) exist since 3.9.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from webhook_service.core.addresses import (
    BLOCKED_NETWORKS,
    IPV4_EMBEDDINGS,
    IPAddress,
    IPNetwork,
    blocked_reason,
    parse_address,
    parse_ip,
)
from webhook_service.core.egress_policy import (
    ALLOWED_SCHEMES,
    VERDICTS_KEPT,
    EgressBlocked,
    EgressPolicy,
    egress_refusal,
    url_host,
)

if TYPE_CHECKING:
    from aiohttp.client_reqrep import ClientRequest
    from aiohttp.connector import Connection
    from aiohttp.tracing import Trace

__all__ = [
    "ALLOWED_SCHEMES",
    "BLOCKED_NETWORKS",
    "IPV4_EMBEDDINGS",
    "VERDICTS_KEPT",
    "EgressBlocked",
    "EgressPolicy",
    "GuardedConnector",
    "GuardedResolver",
    "IPAddress",
    "IPNetwork",
    "Resolver",
    "blocked_reason",
    "egress_refusal",
    "guarded_session",
    "parse_address",
    "system_resolver",
    "url_host",
]

Resolver: TypeAlias = Callable[[str, int], Awaitable[list[str]]]
"""``(host, port) -> [address, ...]``: what :class:`GuardedResolver` checks and hands aiohttp, in order."""


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses ``getaddrinfo`` gives for ``host``, in its order, without duplicates."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that returns only addresses the policy allows.

    It resolves with ``resolver`` (default :func:`system_resolver`), checks EVERY address, and
    returns exactly the checked addresses, which aiohttp connects to without resolving again, so
    nothing can swap the answer between the check and the connection (DNS rebinding). If any
    address is blocked the whole host is refused: a name that resolves to both a public and a
    private address is hostile, not unlucky.

    TLS is unaffected by connecting to an address: aiohttp (``TCPConnector._create_direct_connection``)
    passes ``server_hostname=req.server_hostname or host`` with ``host`` the URL's host, not the
    resolved address, so SNI and certificate verification still use the hostname; the ``Host``
    header likewise comes from the URL.

    Failures that are not refusals (the name does not resolve, the resolver answers garbage) are
    plain ``OSError`` s, which aiohttp reports as ``ClientConnectorDNSError``.
    """

    def __init__(self, policy: EgressPolicy, resolver: Resolver | None = None) -> None:
        self.policy = policy
        self._resolver = resolver or system_resolver

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """``host``'s checked addresses, in the resolver's order (only ``family``'s, when one is given)."""
        texts = await self._resolver(host, port)
        resolved: list[tuple[str, IPAddress]] = []
        for text in texts:
            address = parse_ip(text)
            if address is None:
                raise OSError(f"resolver returned {text!r} for {host}, which is not an IP address")
            resolved.append((text, address))
        for text, address in resolved:
            self.policy.check_address(address, host=None if text == host else host)
        results: list[ResolveResult] = []
        for text, address in resolved:
            address_family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            if family and family != address_family:
                continue
            results.append(
                {
                    "hostname": host,
                    "host": text,
                    "port": port,
                    "family": address_family,
                    "proto": 0,
                    "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                }
            )
        if not results:
            raise OSError(f"{host} resolved to no addresses")
        return results

    async def close(self) -> None:
        return None


class GuardedConnector(aiohttp.TCPConnector):
    """``aiohttp.TCPConnector`` that runs :meth:`EgressPolicy.check_request_target` on every request.

    The caller is expected to check first (it alone sees credentials in the URL: aiohttp moves them
    into an ``Authorization`` header before the connector), but the session must not depend on it:
    with this, any request through a :func:`guarded_session`, and every hop of a followed redirect,
    has its IP-literal host checked, and names are checked by :class:`GuardedResolver`. Relies on
    ``BaseConnector.connect(req, traces, timeout)``, which ``ClientSession._request`` awaits once per
    request (pooled connection or new), and on ``req.url``, the URL it connects to.
    """

    def __init__(self, policy: EgressPolicy, **kwargs: Any) -> None:
        """``kwargs``: ``aiohttp.TCPConnector``'s."""
        super().__init__(**kwargs)
        self.policy = policy

    async def connect(self, req: ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout) -> Connection:
        self.policy.check_request_target(req.url)
        return await super().connect(req, traces, timeout)


# Passing enable_cleanup_closed where Python no longer needs it only earns a DeprecationWarning.
_NEEDS_CLEANUP_CLOSED: bool = getattr(aiohttp.connector, "NEEDS_CLEANUP_CLOSED", True)


def guarded_session(
    policy: EgressPolicy, *, limit: int, timeout: float, resolver: Resolver | None = None
) -> aiohttp.ClientSession:
    """An aiohttp session for deliveries: every connection obeys ``policy``. Create it in a running loop.

    * at most ``limit`` connections (in use or kept alive), reused (``force_close=False``);
    * ``timeout``: a total for each request, from connecting to releasing the response;
    * names resolved by :class:`GuardedResolver` on every new connection (``use_dns_cache=False``:
      a cached answer would only be one checked earlier, but each connection gets a fresh check);
    * no proxies or ``.netrc`` (``trust_env=False``): a proxy would resolve names itself;
    * no cookies (``DummyCookieJar``): one subscriber's ``Set-Cookie`` must not reach another;
    * raw bodies (``auto_decompress=False``) and no ``Accept-Encoding`` offered, so what a caller
      reads is what the subscriber sent, and a compressed body cannot expand past a read limit.

    Callers send with ``allow_redirects=False`` (a redirect is a failed delivery anyway; a followed
    one would still be checked hop by hop) and call :meth:`EgressPolicy.check_request_target` first.
    """
    connector = GuardedConnector(
        policy,
        resolver=GuardedResolver(policy, resolver),
        limit=limit,
        use_dns_cache=False,
        force_close=False,
        enable_cleanup_closed=_NEEDS_CLEANUP_CLOSED,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout),
        trust_env=False,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("Accept-Encoding",),
    )
