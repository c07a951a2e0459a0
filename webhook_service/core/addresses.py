"""Which IP addresses outbound requests must never reach, and what counts as an address.

Kept apart from the HTTP machinery (:mod:`webhook_service.core.egress`) because it is data and pure
functions: the range tables say *why* an address is refused (the reason goes into the refusal and
the logs), and :func:`parse_address` decides what a URL's host means to ``getaddrinfo``, which is
what the connection will do, not what a reader sees.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from typing import TypeAlias

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

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


def parse_ip(text: str) -> IPAddress | None:
    """A strict IP literal (``ipaddress`` syntax, IPv6 ``%scope`` allowed), else None."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
