"""Egress safety (SSRF): subscriber URLs come from customers and must never reach our own network.

The check that matters happens at connect time, after DNS resolution: a name that resolved to a
public address when the subscription was saved can resolve to ``10.0.0.1`` or to the cloud metadata
service a minute later (DNS rebinding). So :class:`GuardedNetworkBackend` resolves the host itself,
checks every address, and connects to an address it checked, never to the name. Saving a
subscription only gets the cheap checks (:meth:`EgressPolicy.validate_subscriber_url`).

Layers, from the outside in::

    httpx.AsyncClient
      -> GuardedTransport.handle_async_request   URL checks (scheme, https-only, userinfo, host)
        -> httpcore.AsyncConnectionPool
          -> GuardedNetworkBackend.connect_tcp    resolve, check every address, connect to a checked one
            -> httpcore.AnyIOBackend              the socket

Refusals are :class:`EgressBlocked`, a ``httpcore.ConnectError``: callers see ``httpx.ConnectError``
either way and tell a refusal from a network failure with :func:`egress_refusal`.

Written against httpx 0.28 and httpcore 1.0 (see :func:`guarded_transport` for the internals used).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeAlias

import httpcore
import httpx

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver: TypeAlias = Callable[[str, int], Awaitable[list[str]]]
"""``(host, port) -> [address, ...]``: what :class:`GuardedNetworkBackend` connects to, in order."""

ALLOWED_SCHEMES = frozenset({"http", "https"})

_net = ipaddress.ip_network

# First match wins, so the narrow entries come before the wide ones that contain them.
BLOCKED_NETWORKS: tuple[tuple[IPNetwork, str], ...] = (
    # IPv4
    (_net("0.0.0.0/8"), '"this network" (0.0.0.0/8)'),
    (_net("10.0.0.0/8"), "private (RFC 1918)"),
    (_net("100.64.0.0/10"), "carrier-grade NAT (100.64.0.0/10)"),
    (_net("127.0.0.0/8"), "loopback (127.0.0.0/8)"),
    (_net("169.254.169.254/32"), "the cloud metadata service (link-local 169.254.0.0/16)"),
    (_net("169.254.0.0/16"), "link-local (169.254.0.0/16)"),
    (_net("172.16.0.0/12"), "private (RFC 1918)"),
    (_net("192.0.0.0/24"), "IETF protocol assignments (192.0.0.0/24)"),
    (_net("192.0.2.0/24"), "documentation (192.0.2.0/24)"),
    (_net("192.168.0.0/16"), "private (RFC 1918)"),
    (_net("198.18.0.0/15"), "benchmarking (198.18.0.0/15)"),
    (_net("198.51.100.0/24"), "documentation (198.51.100.0/24)"),
    (_net("203.0.113.0/24"), "documentation (203.0.113.0/24)"),
    (_net("224.0.0.0/4"), "multicast (224.0.0.0/4)"),
    (_net("255.255.255.255/32"), "broadcast (255.255.255.255)"),
    (_net("240.0.0.0/4"), "reserved (240.0.0.0/4)"),
    # IPv6 (the IPv4-embedding prefixes are in IPV4_EMBEDDINGS, checked before this table)
    (_net("::/128"), "unspecified (::)"),
    (_net("::1/128"), "loopback (::1)"),
    (_net("64:ff9b:1::/48"), "local-use NAT64 (64:ff9b:1::/48)"),
    (_net("2001::/32"), "Teredo tunnelling (2001::/32)"),
    (_net("2001:db8::/32"), "documentation (2001:db8::/32)"),
    (_net("fc00::/7"), "unique local (fc00::/7)"),
    (_net("fe80::/10"), "link-local (fe80::/10)"),
    (_net("fec0::/10"), "site-local (fec0::/10)"),
    (_net("ff00::/8"), "multicast (ff00::/8)"),
)
"""``(network, reason)``: addresses never reached unless an allow list says so."""


def _low_32_bits(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)


def _6to4_bits(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address((int(address) >> 80) & 0xFFFFFFFF)


IPV4_EMBEDDINGS: tuple[
    tuple[ipaddress.IPv6Network, str, Callable[[ipaddress.IPv6Address], ipaddress.IPv4Address]], ...
] = (
    (ipaddress.IPv6Network("::ffff:0:0/96"), "IPv4-mapped", _low_32_bits),
    (ipaddress.IPv6Network("64:ff9b::/96"), "NAT64 (64:ff9b::/96)", _low_32_bits),
    (ipaddress.IPv6Network("2002::/16"), "6to4 (2002::/16)", _6to4_bits),
)
"""``(prefix, name, extract)``: IPv6 forms that reach an IPv4 address, judged by that address.

Teredo (2001::/32) embeds one too (the last 32 bits XOR 0xffffffff), but it is blocked outright:
a tunnel to an arbitrary relay has no business carrying webhooks.
"""


def blocked_reason(address: IPAddress) -> str | None:
    """Why ``address`` must not be reached, or None for an ordinary public address.

    The reason completes the sentence "<address> is ...", e.g. ``"private (RFC 1918)"``. After the
    explicit tables, anything ``ipaddress`` considers private, reserved, unspecified, multicast,
    link-local or loopback is refused too, so ranges the tables miss fail closed.
    """
    if isinstance(address, ipaddress.IPv6Address):
        bare = address if address.scope_id is None else ipaddress.IPv6Address(int(address))
        for prefix, name, extract in IPV4_EMBEDDINGS:
            if bare in prefix:
                # Authoritative either way: ``ipaddress`` calls ::ffff:8.8.8.8 "reserved", yet it is 8.8.8.8.
                embedded = extract(bare)
                inner = blocked_reason(embedded)
                return None if inner is None else f"{name} and embeds {embedded}, which is {inner}"
        address = bare
    for network, reason in BLOCKED_NETWORKS:
        if address.version == network.version and address in network:
            return reason
    for flag, reason in (
        ("is_unspecified", "unspecified"),
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local"),
        ("is_multicast", "multicast"),
        ("is_private", "special-purpose (not publicly routable)"),
        ("is_reserved", "reserved"),
    ):
        if getattr(address, flag):
            return reason
    return None


class EgressBlocked(httpcore.ConnectError):
    """A delivery was refused by the egress policy, before any connection was opened.

    A ``httpcore.ConnectError`` on purpose: raised inside the connection pool, httpx turns it into
    ``httpx.ConnectError`` with this exception as ``__cause__``, so retry logic treats it like an
    unreachable host while :func:`egress_refusal` can still tell the two apart (a refusal will not
    go away on retry; it needs the subscriber to change its URL or an operator to allow the range).
    """

    def __init__(self, reason: str, *, address: str | None = None, host: str | None = None) -> None:
        self.reason = reason
        self.address = address
        self.host = host
        if address is None:
            message = f"egress refused: {reason}"
        elif host is None or host == address:
            message = f"egress refused: {address} is {reason}"
        else:
            message = f"egress refused: {address} (resolved from {host}) is {reason}"
        super().__init__(message)


def egress_refusal(exc: BaseException) -> EgressBlocked | None:
    """The :class:`EgressBlocked` behind ``exc`` (itself, or along ``__cause__``/``__context__``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, EgressBlocked):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


_NUMERIC_IPV4 = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}", re.IGNORECASE)


def parse_address(text: str) -> IPAddress | None:
    """``text`` as an IP address, or None if it is a DNS name.

    Beyond what ``ipaddress`` accepts, the legacy numeric IPv4 forms that ``getaddrinfo`` (and so
    the connection) would honour count as addresses too: ``2130706433``, ``0x7f.1``, ``0177.0.0.1``
    are all 127.0.0.1, and must not slip through a save-time check as "a DNS name".
    """
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if _NUMERIC_IPV4.fullmatch(text):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


def _parse_network(cidr: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(cidr.strip())
    except ValueError as exc:
        raise ValueError(f"invalid CIDR in the egress allow list: {cidr!r} ({exc})") from None


class EgressPolicy:
    """What deliveries may reach: public addresses, plus ``allowed_cidrs``; optionally https only.

    ``allowed_cidrs`` (e.g. ``OUTBOUND_ALLOWED_CIDRS``) is an explicit allow list that wins over the
    block list for addresses inside it: the way to reach a sink on an internal network, or
    ``127.0.0.0/8`` and ``::1/128`` in tests. An invalid entry raises ``ValueError`` at once, so a
    typo fails at startup instead of silently blocking (or allowing) deliveries.
    """

    def __init__(self, allowed_cidrs: Sequence[str] = (), https_only: bool = False) -> None:
        if isinstance(allowed_cidrs, str):  # a lone string would otherwise be split into characters
            allowed_cidrs = (allowed_cidrs,)
        self.allowed_networks: tuple[IPNetwork, ...] = tuple(_parse_network(cidr) for cidr in allowed_cidrs)
        self.https_only = https_only

    def __repr__(self) -> str:
        allowed = [str(network) for network in self.allowed_networks]
        return f"EgressPolicy(allowed_cidrs={allowed!r}, https_only={self.https_only!r})"

    def is_allowed(self, address: IPAddress) -> bool:
        """Whether the allow list covers ``address`` (an IPv4-mapped address counts as its IPv4)."""
        candidates: list[IPAddress] = [address]
        if isinstance(address, ipaddress.IPv6Address):
            candidates[0] = ipaddress.IPv6Address(int(address))  # drop any %scope
            if address.ipv4_mapped is not None:
                candidates.append(address.ipv4_mapped)
        return any(
            candidate.version == network.version and candidate in network
            for candidate in candidates
            for network in self.allowed_networks
        )

    def refusal_reason(self, address: IPAddress) -> str | None:
        """:func:`blocked_reason`, unless the allow list covers ``address``."""
        return None if self.is_allowed(address) else blocked_reason(address)

    def check_address(self, address: IPAddress, *, host: str | None = None) -> None:
        """Raise :class:`EgressBlocked` unless ``address`` may be reached (``host``: for the message)."""
        reason = self.refusal_reason(address)
        if reason is not None:
            raise EgressBlocked(reason, address=str(address), host=host)

    def check_url(self, url: str | httpx.URL) -> None:
        """Refuse URLs that no address check can make safe; raise :class:`EgressBlocked`.

        Refused: schemes other than http(s); plain http when ``https_only``; credentials in the URL
        (they end up in logs, and ``https://trusted.example@evil.example`` is a classic way to fool
        a reader); no host. Addresses are not checked here but at connect time, after resolution.
        An unparseable ``url`` string raises ``ValueError`` instead: that is bad input, not a refusal.
        """
        problem = self._url_problem(_parse_url(url))
        if problem is not None:
            raise EgressBlocked(problem)

    def validate_subscriber_url(self, url: str) -> str | None:
        """A human-readable problem with ``url`` as a subscriber URL, or None; for when it is saved.

        The URL checks of :meth:`check_url`, plus the address check when the host is an IP literal.
        DNS names are deliberately not resolved: the answer could change by the time of delivery,
        so it would prove nothing, and the connect-time check catches it anyway.
        """
        try:
            parsed = _parse_url(url)
        except ValueError as exc:
            return str(exc)
        problem = self._url_problem(parsed)
        if problem is not None:
            return problem
        address = parse_address(parsed.host)
        if address is None:
            return None
        reason = self.refusal_reason(address)
        if reason is None:
            return None
        shown = parsed.host if parsed.host == str(address) else f"{parsed.host} ({address})"
        return f"{shown} is {reason}"

    def _url_problem(self, url: httpx.URL) -> str | None:
        if url.scheme not in ALLOWED_SCHEMES:
            return f"scheme {url.scheme!r} is not allowed (only http and https)" if url.scheme else "URL has no scheme"
        if self.https_only and url.scheme != "https":
            return "plain http is not allowed (OUTBOUND_HTTPS_ONLY)"
        if url.userinfo:
            return "credentials in the URL are not allowed"
        try:
            host = url.host
        except UnicodeError:  # a malformed IDNA label such as xn--
            return "the host name is not valid"
        if not host:
            return "URL has no host"
        return None


def _parse_url(url: str | httpx.URL) -> httpx.URL:
    if isinstance(url, httpx.URL):
        return url
    try:
        return httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"invalid URL {url!r}: {exc}") from None


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses ``getaddrinfo`` gives for ``host``, in its order, without duplicates."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that connects only to addresses the policy allows.

    ``connect_tcp`` resolves the host itself, checks every address, and hands the wrapped backend
    an address, never the name, so nothing can re-resolve it to something else between the check
    and the connection (DNS rebinding). If any address is blocked the whole host is refused: a name
    that resolves to both a public and a private address is hostile, not unlucky.

    TLS is unaffected by connecting to an address: httpcore (1.0, ``_async/connection.py``,
    ``AsyncHTTPConnection._connect``) calls ``stream.start_tls(server_hostname=...)`` with the
    request's ``sni_hostname`` extension or else the URL's host (``self._origin.host``), not with
    what ``connect_tcp`` received, so SNI and certificate verification still use the hostname.
    The ``Host`` header likewise comes from the URL.
    """

    def __init__(
        self,
        policy: EgressPolicy,
        resolver: Resolver | None = None,
        *,
        backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        """``resolver``: defaults to :func:`system_resolver`; ``backend``: to ``httpcore.AnyIOBackend()``."""
        self.policy = policy
        self._resolver = resolver or system_resolver
        self._backend = backend or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Resolve, check every address, then connect to the checked addresses in order.

        Trying the next checked address when one fails at once (e.g. an IPv6 address on a host
        without IPv6 routes) keeps what ``anyio.connect_tcp`` would have done with the name; a
        timeout is not retried on another address, so ``timeout`` bounds the whole call.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        addresses = await self._resolve(host, port, timeout)
        for text, address in addresses:
            self.policy.check_address(address, host=None if text == host else host)
        last_error: httpcore.ConnectError | None = None
        for text, _ in addresses:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise httpcore.ConnectTimeout(f"timed out connecting to {host}")
            try:
                return await self._backend.connect_tcp(
                    text, port, timeout=remaining, local_address=local_address, socket_options=socket_options
                )
            except httpcore.ConnectError as exc:
                last_error = exc
        assert last_error is not None  # _resolve never returns an empty list
        raise last_error

    async def _resolve(self, host: str, port: int, timeout: float | None) -> list[tuple[str, IPAddress]]:
        """``(text to connect to, parsed address)`` pairs; an IP literal is taken as it is."""
        literal = _parse_ip(host)
        if literal is not None:
            return [(host, literal)]
        try:
            async with asyncio.timeout(timeout):
                texts = await self._resolver(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"timed out resolving {host}") from None
        except OSError as exc:  # socket.gaierror included
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        resolved: list[tuple[str, IPAddress]] = []
        for text in texts:
            address = _parse_ip(text)
            if address is None:
                raise httpcore.ConnectError(f"resolver returned {text!r} for {host}, which is not an IP address")
            resolved.append((text, address))
        if not resolved:
            raise httpcore.ConnectError(f"{host} resolved to no addresses")
        return resolved

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Always refused: a unix socket is local by definition."""
        raise EgressBlocked(f"unix socket {path} is not allowed")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


def _parse_ip(text: str) -> IPAddress | None:
    """A strict IP literal (``ipaddress`` syntax, IPv6 ``%scope`` allowed), else None."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


DEFAULT_LIMITS = httpx.Limits(max_connections=200, max_keepalive_connections=50)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """``httpx.AsyncHTTPTransport`` whose pool connects through :class:`GuardedNetworkBackend`.

    URL checks run on every request, before the pool; the address checks run when the pool opens a
    connection (a kept-alive connection was checked when it was opened). No proxy and no
    ``trust_env``: a proxy would resolve names itself and defeat the address check. httpcore's
    ``retries`` stays 0: it retries any ``ConnectError``, which would only repeat a refusal.
    """

    def __init__(
        self, policy: EgressPolicy, *, limits: httpx.Limits = DEFAULT_LIMITS, resolver: Resolver | None = None
    ) -> None:
        ssl_context = httpx.create_ssl_context(trust_env=False)
        # Passing the context as ``verify`` makes the stock pool reuse it instead of building another.
        super().__init__(verify=ssl_context, trust_env=False, limits=limits)
        self.policy = policy
        # Same arguments as httpx 0.28's AsyncHTTPTransport.__init__ (no-proxy branch), plus the backend.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=GuardedNetworkBackend(policy, resolver),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Check the URL first; refusals surface exactly like connect-time ones.

        httpx maps httpcore exceptions only around the pool call, so an ``EgressBlocked`` raised
        here would escape raw: raise ``httpx.ConnectError`` from it instead, the same shape as the
        refusals raised inside the pool.
        """
        try:
            self.policy.check_url(request.url)
        except EgressBlocked as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        return await super().handle_async_request(request)


def guarded_transport(
    policy: EgressPolicy, *, limits: httpx.Limits = DEFAULT_LIMITS, resolver: Resolver | None = None
) -> httpx.AsyncHTTPTransport:
    """An httpx transport for deliveries: every connection obeys ``policy``.

    Use it with ``follow_redirects=False`` (a redirect is a failed delivery anyway, and following it
    would only be safe because every hop goes through the same checks). It relies on two httpx 0.28
    / httpcore 1.0 internals: the transport's ``_pool`` attribute, which
    ``AsyncHTTPTransport.handle_async_request`` sends through, and httpcore's
    ``AsyncConnectionPool(network_backend=...)`` argument.
    """
    return GuardedTransport(policy, limits=limits, resolver=resolver)
