"""What an outbound request may reach, decided before any connection: the egress policy.

Kept apart from the aiohttp plumbing (:mod:`webhook_service.core.egress`) because it is decided on
the URL and the address alone, the same way when a subscription is saved
(:meth:`EgressPolicy.validate_subscriber_url`), before each request
(:meth:`EgressPolicy.check_request_target`) and at connect time, after DNS
(:meth:`EgressPolicy.check_address`, called by the resolver). A refusal is :class:`EgressBlocked`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import TYPE_CHECKING

from yarl import URL

from webhook_service.core.addresses import IPAddress, IPNetwork, blocked_reason, parse_address, parse_ip

if TYPE_CHECKING:
    import httpx

ALLOWED_SCHEMES = frozenset({"http", "https"})
VERDICTS_KEPT = 1024
"""How many URLs' :meth:`EgressPolicy.check_request_target` verdicts a policy remembers."""


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
                self.check_address(address, host=None if parse_ip(host or "") is not None else host)
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


def url_host(url: str) -> str | None:
    """The host of ``url`` as the policy reads it; None when ``url`` does not parse."""
    try:
        return _parse_url(url).host
    except (ValueError, UnicodeError):  # UnicodeError: a malformed IDNA label such as xn--
        return None


def _parse_url(url: str | httpx.URL) -> httpx.URL:
    # Imported here: every CLI command imports this module, few check a URL, and httpx costs a
    # tenth of a second to import.
    import httpx

    if isinstance(url, httpx.URL):
        return url
    try:
        return httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"invalid URL {url!r}: {exc}") from None
