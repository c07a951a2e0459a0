"""Egress safety: deliveries never reach our own network, whatever the URL or its DNS says.

Address rules are a table test; the rest runs real requests through ``guarded_transport`` against a
recording server on 127.0.0.1, with injected resolvers standing in for hostile DNS. Refusals happen
before any connection, so the refused cases need no server and no network at all.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Iterable, Iterator

import httpcore
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from webhook_service.delivery.egress import (
    EgressBlocked,
    EgressPolicy,
    GuardedNetworkBackend,
    blocked_reason,
    egress_refusal,
    guarded_transport,
    parse_address,
)
from webhook_service.serving import BackgroundServer

FAST = httpx.Timeout(1.0)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("10.0.0.1", "private (RFC 1918)"),
        ("172.16.5.4", "private (RFC 1918)"),
        ("172.31.255.255", "private (RFC 1918)"),
        ("192.168.1.1", "private (RFC 1918)"),
        ("169.254.169.254", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("100.127.255.255", "carrier-grade NAT"),
        ("0.0.0.0", "this network"),
        ("0.1.2.3", "this network"),
        ("192.0.0.8", "192.0.0.0/24"),
        ("192.0.2.1", "documentation"),
        ("198.18.0.1", "benchmarking"),
        ("198.19.255.255", "benchmarking"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "broadcast"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fe80::1%2", "link-local"),
        ("fd00::1", "unique local"),
        ("fc00::1", "unique local"),
        ("fec0::1", "site-local"),
        ("ff02::1", "multicast"),
        ("2001:db8::1", "documentation"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo tunnelling"),
        ("::ffff:10.0.0.1", "IPv4-mapped and embeds 10.0.0.1, which is private (RFC 1918)"),
        ("::ffff:127.0.0.1", "embeds 127.0.0.1, which is loopback"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("64:ff9b::a00:1", "NAT64 (64:ff9b::/96) and embeds 10.0.0.1, which is private"),
        ("64:ff9b::7f00:1", "embeds 127.0.0.1"),
        ("64:ff9b:1::1", "local-use NAT64"),
        ("2002:a00:1::1", "6to4 (2002::/16) and embeds 10.0.0.1, which is private"),
        ("2002:a9fe:a9fe::", "embeds 169.254.169.254"),
        ("::10.0.0.1", "reserved"),  # deprecated IPv4-compatible form: caught by the ipaddress fallback
    ],
)
def test_blocked_ranges(address: str, expected: str) -> None:
    reason = blocked_reason(ipaddress.ip_address(address))
    assert reason is not None and expected in reason


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "93.184.216.34",
        "2606:4700:4700::1111",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
    ],
)
def test_public_addresses_pass(address: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) is None


def test_allow_list_overrides_block_list_only_inside_it() -> None:
    policy = EgressPolicy(["127.0.0.0/8", "::1/128"])
    policy.check_address(ipaddress.ip_address("127.0.0.1"))
    policy.check_address(ipaddress.ip_address("::1"))
    policy.check_address(ipaddress.ip_address("::ffff:127.0.0.1"))  # the same host as 127.0.0.1
    with pytest.raises(EgressBlocked, match=r"egress refused: 10\.0\.0\.1 is private \(RFC 1918\)"):
        policy.check_address(ipaddress.ip_address("10.0.0.1"))


@pytest.mark.parametrize("cidr", ["10.0.0.0/33", "10.0.0.1/8", "not-a-network", ""])
def test_invalid_cidr_is_a_clear_value_error(cidr: str) -> None:
    with pytest.raises(ValueError, match="invalid CIDR in the egress allow list"):
        EgressPolicy([cidr])


def test_numeric_ipv4_forms_count_as_addresses() -> None:
    for text in ("2130706433", "0x7f.1", "0177.0.0.1", "127.1"):
        assert parse_address(text) == ipaddress.IPv4Address("127.0.0.1")
    assert parse_address("hooks.example.com") is None
    assert parse_address("1.example") is None


@pytest.mark.parametrize(
    ("url", "https_only", "problem"),
    [
        ("ftp://example.com/hook", False, "scheme 'ftp' is not allowed"),
        ("not a url", False, "no scheme"),
        ("http://example.com/hook", True, "plain http is not allowed (OUTBOUND_HTTPS_ONLY)"),
        ("https://user:secret@example.com/hook", False, "credentials"),
        ("https://example.com@evil.example/hook", False, "credentials"),
        ("https:///hook", False, "no host"),
        ("http://[::1", False, "invalid URL"),
        ("https://10.0.0.1/hook", False, "10.0.0.1 is private (RFC 1918)"),
        ("https://169.254.169.254/latest/meta-data/", False, "cloud metadata"),
        ("https://[::1]:8443/hook", False, "::1 is loopback"),
        ("https://[::ffff:192.168.0.1]/hook", False, "embeds 192.168.0.1"),
        ("https://2130706433/hook", False, "2130706433 (127.0.0.1) is loopback"),
        ("https://hooks.example.com/hook", True, None),  # DNS names are checked at connect time
        ("http://hooks.example.com:8080/hook?x=1", False, None),
        ("https://8.8.8.8/hook", False, None),
    ],
)
def test_validate_subscriber_url(url: str, https_only: bool, problem: str | None) -> None:
    found = EgressPolicy(https_only=https_only).validate_subscriber_url(url)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_validate_subscriber_url_honours_the_allow_list() -> None:
    assert EgressPolicy(["127.0.0.0/8"]).validate_subscriber_url("http://127.0.0.1:9000/hook") is None


def test_check_url_raises_value_error_only_for_malformed_urls() -> None:
    policy = EgressPolicy()
    with pytest.raises(ValueError, match="invalid URL"):
        policy.check_url("http://[::1")
    with pytest.raises(EgressBlocked, match="scheme 'file'"):
        policy.check_url(httpx.URL("file:///etc/passwd"))
    policy.check_url("https://hooks.example.com/")


def test_egress_refusal_walks_the_chain() -> None:
    blocked = EgressBlocked("loopback", address="127.0.0.1")
    try:
        try:
            raise blocked
        except EgressBlocked as exc:
            raise httpx.ConnectError(str(exc)) from exc
    except httpx.ConnectError as outer:
        assert egress_refusal(outer) is blocked
    assert egress_refusal(httpx.ConnectError("connection refused")) is None


# --- real requests through the transport --------------------------------------------------------


class Sink:
    """A server on 127.0.0.1 that records the Host header of every request it receives."""

    def __init__(self, server: BackgroundServer, hosts: list[str]) -> None:
        self.server, self.hosts = server, hosts


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    hosts: list[str] = []

    async def record(request: Request) -> PlainTextResponse:
        hosts.append(request.headers["host"])
        return PlainTextResponse("ok")

    with BackgroundServer(Starlette(routes=[Route("/", record)])) as server:
        yield Sink(server, hosts)


@pytest.fixture
def fresh_sink(sink: Sink) -> Sink:
    sink.hosts.clear()
    return sink


def fake_dns(table: dict[str, list[str]], calls: list[str] | None = None):
    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    return resolve


def client(policy: EgressPolicy, resolver=None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=guarded_transport(policy, resolver=resolver), follow_redirects=False, timeout=FAST
    )


async def refusal(policy: EgressPolicy, url: str, resolver=None) -> EgressBlocked:
    async with client(policy, resolver) as http:
        with pytest.raises(httpx.ConnectError) as caught:
            await http.get(url)
    assert isinstance(caught.value.__cause__, EgressBlocked)
    assert str(caught.value) == str(caught.value.__cause__)
    return caught.value.__cause__


async def test_loopback_refused_without_allow_list(fresh_sink: Sink) -> None:
    blocked = await refusal(EgressPolicy(), f"http://127.0.0.1:{fresh_sink.server.port}/")
    assert str(blocked) == "egress refused: 127.0.0.1 is loopback (127.0.0.0/8)"
    assert fresh_sink.hosts == []


async def test_ipv6_loopback_refused(fresh_sink: Sink) -> None:
    blocked = await refusal(EgressPolicy(), f"http://[::1]:{fresh_sink.server.port}/")
    assert "::1 is loopback" in str(blocked)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://10.0.0.1/", "private (RFC 1918)"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("https://[fd00::1]/", "unique local"),
        ("http://[::ffff:10.0.0.1]/", "embeds 10.0.0.1"),
    ],
)
async def test_internal_addresses_refused(url: str, reason: str) -> None:
    assert reason in (await refusal(EgressPolicy(), url)).reason


async def test_name_resolving_to_private_address_refused() -> None:
    calls: list[str] = []
    blocked = await refusal(
        EgressPolicy(), "https://internal.example/hook", fake_dns({"internal.example": ["10.0.0.1"]}, calls)
    )
    assert str(blocked) == "egress refused: 10.0.0.1 (resolved from internal.example) is private (RFC 1918)"
    assert (blocked.host, blocked.address) == ("internal.example", "10.0.0.1")
    assert calls == ["internal.example"]


async def test_name_resolving_to_public_and_private_addresses_refused_outright() -> None:
    dns = fake_dns({"mixed.example": ["93.184.216.34", "192.168.0.10"]})
    blocked = await refusal(EgressPolicy(), "https://mixed.example/hook", dns)
    assert blocked.address == "192.168.0.10"


async def test_allowed_name_connects_to_the_checked_address_and_keeps_the_host(fresh_sink: Sink) -> None:
    calls: list[str] = []
    port = fresh_sink.server.port
    async with client(EgressPolicy(["127.0.0.0/8"]), fake_dns({"sink.test": ["127.0.0.1"]}, calls)) as http:
        response = await http.get(f"http://sink.test:{port}/")
    assert (response.status_code, response.text) == (200, "ok")
    # "sink.test" is not in any real DNS: the request got there through the checked address.
    assert calls == ["sink.test"]
    assert fresh_sink.hosts == [f"sink.test:{port}"]


async def test_system_resolver_is_checked_too(fresh_sink: Sink) -> None:
    port = fresh_sink.server.port
    blocked = await refusal(EgressPolicy(), f"http://localhost:{port}/")
    assert "(resolved from localhost) is loopback" in str(blocked)
    async with client(EgressPolicy(["127.0.0.0/8", "::1/128"])) as http:
        response = await http.get(f"http://localhost:{port}/")
    assert response.status_code == 200
    assert fresh_sink.hosts == [f"localhost:{port}"]


async def test_falls_back_to_the_next_checked_address(fresh_sink: Sink) -> None:
    # The sink listens on 127.0.0.1 only, so ::1 fails at once (refused, or no IPv6 at all).
    port = fresh_sink.server.port
    policy = EgressPolicy(["127.0.0.0/8", "::1/128"])
    async with client(policy, fake_dns({"sink.test": ["::1", "127.0.0.1"]})) as http:
        response = await http.get(f"http://sink.test:{port}/")
    assert response.status_code == 200
    assert fresh_sink.hosts == [f"sink.test:{port}"]


async def test_https_only_refuses_http_before_resolving(fresh_sink: Sink) -> None:
    calls: list[str] = []
    policy = EgressPolicy(["127.0.0.0/8"], https_only=True)
    blocked = await refusal(policy, f"http://sink.test:{fresh_sink.server.port}/", fake_dns({}, calls))
    assert str(blocked) == "egress refused: plain http is not allowed (OUTBOUND_HTTPS_ONLY)"
    assert calls == [] and fresh_sink.hosts == []


async def test_userinfo_refused_per_request() -> None:
    blocked = await refusal(EgressPolicy(), "https://user:pw@hooks.example.com/")
    assert "credentials" in str(blocked)


async def test_network_failure_is_not_a_refusal() -> None:
    with socket.socket() as probe:  # a port nobody listens on: bound, then closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with client(EgressPolicy(["127.0.0.0/8"])) as http:
        with pytest.raises(httpx.ConnectError) as caught:
            await http.get(f"http://127.0.0.1:{port}/")
    assert egress_refusal(caught.value) is None


async def test_unresolvable_name_is_a_connect_error() -> None:
    async with client(EgressPolicy(), fake_dns({})) as http:
        with pytest.raises(httpx.ConnectError, match="cannot resolve nowhere.example") as caught:
            await http.get("https://nowhere.example/")
    assert egress_refusal(caught.value) is None


# --- the backend on its own: what reaches the socket layer --------------------------------------


class Reached(Exception):
    pass


class RecordingStream(httpcore.AsyncNetworkStream):
    def __init__(self, log: list[tuple[str, str | None]]) -> None:
        self.log = log

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        self.log.append(("start_tls", server_hostname))
        raise Reached

    async def aclose(self) -> None:
        return None


class RecordingBackend(httpcore.AsyncNetworkBackend):
    """Stands in for the socket layer: records what it was asked to connect to, opens nothing."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str | None]] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.log.append(("connect_tcp", host))
        return RecordingStream(self.log)


async def test_blocked_host_never_reaches_the_socket_layer() -> None:
    inner = RecordingBackend()
    dns = fake_dns({"mixed.example": ["93.184.216.34", "10.0.0.1"]})
    backend = GuardedNetworkBackend(EgressPolicy(), dns, backend=inner)
    for host in ("10.0.0.1", "169.254.169.254", "::1", "mixed.example"):
        with pytest.raises(EgressBlocked):
            await backend.connect_tcp(host, 443, timeout=1.0)
    with pytest.raises(EgressBlocked, match="unix socket"):
        await backend.connect_unix_socket("/var/run/docker.sock")
    assert inner.log == []


async def test_tls_uses_the_hostname_while_tcp_uses_the_checked_address() -> None:
    inner = RecordingBackend()
    backend = GuardedNetworkBackend(EgressPolicy(), fake_dns({"hooks.example": ["93.184.216.34"]}), backend=inner)
    async with httpcore.AsyncConnectionPool(network_backend=backend) as pool:
        with pytest.raises(Reached):
            await pool.request("GET", "https://hooks.example/hook")
    assert inner.log == [("connect_tcp", "93.184.216.34"), ("start_tls", "hooks.example")]
