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

Written against aiohttp 3.14 (see :class:`GuardedConnector` and :func:`guarded_session` for the
internals used); the public pieces it needs (``AbstractResolver``, ``ResolveResult``) exist since 3.9.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import aiohttp
import httpx
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

if TYPE_CHECKING:
    from aiohttp.client_reqrep import ClientRequest
    from aiohttp.connector import Connection
    from aiohttp.tracing import Trace

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver: TypeAlias = Callable[[str, int], Awaitable[list[str]]]
"""``(host, port) -> [address, ...]``: what :class:`GuardedResolver` checks and hands aiohttp, in order."""

ALLOWED_SCHEMES = frozenset({"http", "https"})
VERDICTS_KEPT = 1024
"""How many URLs' :meth:`EgressPolicy.check_request_target` verdicts a policy remembers."""

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


class EgressBlocked(ConnectionError):
    """A delivery was refused by the egress policy, before any connection was opened.

    A ``ConnectionError`` (an ``OSError``) on purpose: raised by :class:`GuardedResolver`, aiohttp
    turns it into ``aiohttp.ClientConnectorDNSError``, and raised by :class:`GuardedConnector` into
    ``aiohttp.ClientOSError``, in both cases with this exception as ``__cause__``. So retry logic
    treats it like an unreachable host while :func:`egress_refusal` can still tell the two apart
    (a refusal will not go away on retry; it needs the subscriber to change its URL or an operator
    to allow the range).
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
        # aiohttp's ClientConnectorError shows its cause's strerror: "Cannot connect to host ... [<this>]"
        self.strerror = message


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
        # check_request_target's verdicts: None, or a refusal's (reason, address, host). Nothing in a
        # verdict depends on DNS or time, only on the URL and on this (unchanging) policy.
        self._verdicts: dict[str | URL, tuple[str, str | None, str | None] | None] = {}

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
        a reader); no host. Addresses are not checked here: see :meth:`check_request_target`.
        An unparseable ``url`` string raises ``ValueError`` instead: that is bad input, not a refusal.
        """
        problem = self._url_problem(_parse_url(url))
        if problem is not None:
            raise EgressBlocked(problem)

    def check_request_target(self, url: str | URL) -> None:
        """Every check that can be made before connecting; raise :class:`EgressBlocked`. Before every request.

        :meth:`check_url`, then, when the host is an IP literal, the address check: aiohttp connects
        to a literal without asking the resolver, so :class:`GuardedResolver` never sees it. The
        host is the one aiohttp will use (``yarl.URL(url).raw_host``: aiohttp parses with yarl), read
        with :func:`parse_address`, so legacy forms such as ``2130706433`` (127.0.0.1) count as
        addresses. DNS names pass here and are checked by the resolver, after resolution. An
        unparseable ``url`` raises ``ValueError`` (bad input, not a refusal).

        Verdicts are remembered per URL (at most ``VERDICTS_KEPT``): parsing costs ~20 µs, and a
        delivery runs this twice (the caller, then :class:`GuardedConnector`), to the same few URLs.
        """
        try:
            verdict = self._verdicts[url]
        except KeyError:
            verdict = self._request_target_verdict(url)
            if len(self._verdicts) >= VERDICTS_KEPT:
                self._verdicts.clear()
            self._verdicts[url] = verdict
        if verdict is not None:
            reason, address, host = verdict
            raise EgressBlocked(reason, address=address, host=host)

    def _request_target_verdict(self, url: str | URL) -> tuple[str, str | None, str | None] | None:
        try:
            self.check_url(str(url))
            host = (url if isinstance(url, URL) else URL(url)).raw_host
            address = parse_address(host) if host else None
            if address is not None:
                self.check_address(address, host=None if _parse_ip(host or "") is not None else host)
        except EgressBlocked as exc:
            return exc.reason, exc.address, exc.host
        return None

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


def _parse_ip(text: str) -> IPAddress | None:
    """A strict IP literal (``ipaddress`` syntax, IPv6 ``%scope`` allowed), else None."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


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
            address = _parse_ip(text)
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
