"""Egress safety: deliveries never reach our own network, whatever the URL or its DNS says.

Address rules are a table test; the rest runs real requests through ``guarded_session`` against a
recording server on 127.0.0.1, with injected resolvers standing in for hostile DNS. Refusals happen
before any connection (every ``socket.connect`` is recorded to prove it), so the refused cases need
no server and no network at all.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from yarl import URL

from webhook_service.core.egress import (
    EgressBlocked,
    EgressPolicy,
    GuardedResolver,
    blocked_reason,
    egress_refusal,
    guarded_session,
    parse_address,
)
from webhook_service.sandbox.serving import BackgroundServer

FAST = 2.0  # seconds: total per request


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
            raise aiohttp.ClientOSError(*exc.args) from exc  # what aiohttp does with an OSError
    except aiohttp.ClientOSError as outer:
        assert egress_refusal(outer) is blocked
    assert egress_refusal(aiohttp.ClientOSError("connection refused")) is None
    # an OSError that is neither a timeout nor retried by aiohttp: wrapped as a connection failure
    assert isinstance(blocked, ConnectionError) and not isinstance(blocked, TimeoutError)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:9/", "egress refused: 127.0.0.1 is loopback (127.0.0.0/8)"),
        ("http://[::1]:9/", "egress refused: ::1 is loopback (::1)"),
        ("http://10.0.0.1/", "egress refused: 10.0.0.1 is private (RFC 1918)"),
        ("http://2130706433:9/", "egress refused: 127.0.0.1 (resolved from 2130706433) is loopback"),
        ("http://0x7f.1/", "127.0.0.1 (resolved from 0x7f.1) is loopback"),
        ("http://127.1/", "127.0.0.1 (resolved from 127.1) is loopback"),
        ("http://0xa9fea9fe/", "the cloud metadata service"),
        ("https://user:pw@hooks.example.com/", "egress refused: credentials in the URL are not allowed"),
        ("gopher://hooks.example.com/", "scheme 'gopher' is not allowed"),
    ],
)
def test_check_request_target(url: str, expected: str) -> None:
    with pytest.raises(EgressBlocked) as caught:
        EgressPolicy().check_request_target(url)
    assert expected in str(caught.value)


def test_check_request_target_passes_names_and_allowed_addresses() -> None:
    EgressPolicy().check_request_target("https://hooks.example.com/x")  # names: the resolver's job
    EgressPolicy().check_request_target("https://8.8.8.8/x")
    EgressPolicy(["127.0.0.0/8"]).check_request_target("http://2130706433:9/")
    for malformed in ("http://[::1", "http://0177.0.0.1/"):  # httpx rejects octal IPv4: never sent either
        with pytest.raises(ValueError, match="invalid URL"):
            EgressPolicy().check_request_target(malformed)


def test_check_request_target_remembers_verdicts_but_raises_afresh() -> None:
    policy = EgressPolicy()
    refusals = []
    for _ in range(2):
        with pytest.raises(EgressBlocked) as caught:
            policy.check_request_target("http://10.0.0.1/hook")
        refusals.append(caught.value)
    assert refusals[0] is not refusals[1] and str(refusals[0]) == str(refusals[1])
    assert refusals[1].__traceback__ is not None and refusals[1].__context__ is None
    policy.check_request_target("https://hooks.example.com/")
    policy.check_request_target(URL("https://hooks.example.com/"))  # what the connector passes
    assert len(policy._verdicts) == 3
    with pytest.raises(ValueError):
        policy.check_request_target("http://[::1")
    assert len(policy._verdicts) == 3  # bad input is not remembered


# --- real requests through the session ----------------------------------------------------------


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


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every ``(address, port)`` a socket in this process is asked to connect to, during the test."""
    seen: list[tuple[str, int]] = []
    connect = socket.socket.connect

    def recording(self: socket.socket, address) -> None:  # type: ignore[no-untyped-def]
        seen.append(tuple(address[:2]))
        connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", recording)
    return seen


def fake_dns(table: dict[str, list[str]], calls: list[str] | None = None):
    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    return resolve


def session(policy: EgressPolicy, resolver=None) -> aiohttp.ClientSession:
    return guarded_session(policy, limit=4, timeout=FAST, resolver=resolver)


async def get(http: aiohttp.ClientSession, url: str, **kwargs) -> tuple[int, str]:
    async with http.get(url, allow_redirects=False, **kwargs) as response:
        return response.status, await response.text()


async def refusal(policy: EgressPolicy, url: str, resolver=None) -> EgressBlocked:
    """What the session raises for ``url``: an aiohttp error caused by an :class:`EgressBlocked`."""
    async with session(policy, resolver) as http:
        with pytest.raises(aiohttp.ClientOSError) as caught:
            await get(http, url)
    blocked = egress_refusal(caught.value)
    assert blocked is not None and caught.value.__cause__ is blocked
    assert str(blocked) in str(caught.value)
    return blocked


async def test_loopback_refused_without_allow_list(fresh_sink: Sink, connects: list) -> None:
    blocked = await refusal(EgressPolicy(), f"http://127.0.0.1:{fresh_sink.server.port}/")
    assert str(blocked) == "egress refused: 127.0.0.1 is loopback (127.0.0.0/8)"
    assert fresh_sink.hosts == [] and connects == []


async def test_ipv6_loopback_refused(fresh_sink: Sink, connects: list) -> None:
    blocked = await refusal(EgressPolicy(), f"http://[::1]:{fresh_sink.server.port}/")
    assert "::1 is loopback" in str(blocked)
    assert connects == []


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://10.0.0.1/", "private (RFC 1918)"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("https://[fd00::1]/", "unique local"),
        ("http://[::ffff:10.0.0.1]/", "embeds 10.0.0.1"),
    ],
)
async def test_internal_addresses_refused_without_traffic(url: str, reason: str, connects: list) -> None:
    assert reason in (await refusal(EgressPolicy(), url)).reason
    assert connects == []


async def test_legacy_numeric_address_refused(fresh_sink: Sink, connects: list) -> None:
    url = f"http://2130706433:{fresh_sink.server.port}/"
    with pytest.raises(EgressBlocked, match=r"127\.0\.0\.1 \(resolved from 2130706433\) is loopback"):
        EgressPolicy().check_request_target(url)
    blocked = await refusal(EgressPolicy(), url)  # the session checks it on its own too
    assert blocked.address == "127.0.0.1"
    assert fresh_sink.hosts == [] and connects == []


async def test_name_resolving_to_private_address_refused(connects: list) -> None:
    calls: list[str] = []
    blocked = await refusal(
        EgressPolicy(), "https://internal.example/hook", fake_dns({"internal.example": ["10.0.0.1"]}, calls)
    )
    assert str(blocked) == "egress refused: 10.0.0.1 (resolved from internal.example) is private (RFC 1918)"
    assert (blocked.host, blocked.address) == ("internal.example", "10.0.0.1")
    assert calls == ["internal.example"] and connects == []


async def test_name_resolving_to_public_and_private_addresses_refused_outright(connects: list) -> None:
    dns = fake_dns({"mixed.example": ["93.184.216.34", "192.168.0.10"]})
    blocked = await refusal(EgressPolicy(), "https://mixed.example/hook", dns)
    assert blocked.address == "192.168.0.10"
    assert connects == []  # not even to the public one


async def test_allowed_name_connects_to_the_checked_address_and_keeps_the_host(
    fresh_sink: Sink, connects: list
) -> None:
    calls: list[str] = []
    port = fresh_sink.server.port
    async with session(EgressPolicy(["127.0.0.0/8"]), fake_dns({"sink.test": ["127.0.0.1"]}, calls)) as http:
        assert await get(http, f"http://sink.test:{port}/") == (200, "ok")
        assert await get(http, f"http://sink.test:{port}/") == (200, "ok")  # a kept-alive connection
    # "sink.test" is not in any real DNS: the request got there through the checked address.
    assert calls == ["sink.test"]
    assert connects == [("127.0.0.1", port)]
    assert fresh_sink.hosts == [f"sink.test:{port}"] * 2


async def test_system_resolver_is_checked_too(fresh_sink: Sink) -> None:
    port = fresh_sink.server.port
    blocked = await refusal(EgressPolicy(), f"http://localhost:{port}/")
    assert "(resolved from localhost) is loopback" in str(blocked)
    async with session(EgressPolicy(["127.0.0.0/8", "::1/128"])) as http:
        assert await get(http, f"http://localhost:{port}/") == (200, "ok")
    assert fresh_sink.hosts == [f"localhost:{port}"]


async def test_falls_back_to_the_next_checked_address(fresh_sink: Sink) -> None:
    # The sink listens on 127.0.0.1 only, so ::1 fails at once (refused, or no IPv6 at all).
    port = fresh_sink.server.port
    policy = EgressPolicy(["127.0.0.0/8", "::1/128"])
    async with session(policy, fake_dns({"sink.test": ["::1", "127.0.0.1"]})) as http:
        assert await get(http, f"http://sink.test:{port}/") == (200, "ok")
    assert fresh_sink.hosts == [f"sink.test:{port}"]


async def test_https_only_refuses_http_before_resolving(fresh_sink: Sink, connects: list) -> None:
    calls: list[str] = []
    policy = EgressPolicy(["127.0.0.0/8"], https_only=True)
    blocked = await refusal(policy, f"http://sink.test:{fresh_sink.server.port}/", fake_dns({}, calls))
    assert str(blocked) == "egress refused: plain http is not allowed (OUTBOUND_HTTPS_ONLY)"
    assert calls == [] and connects == [] and fresh_sink.hosts == []


def test_userinfo_refused_per_request() -> None:
    # aiohttp moves credentials into an Authorization header before the connector sees the URL,
    # so this is the caller's check (the worker runs it before every request).
    with pytest.raises(EgressBlocked, match="credentials"):
        EgressPolicy().check_request_target("https://user:pw@hooks.example.com/")


async def test_network_failure_is_not_a_refusal() -> None:
    with socket.socket() as probe:  # a port nobody listens on: bound, then closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with session(EgressPolicy(["127.0.0.0/8"])) as http:
        with pytest.raises(aiohttp.ClientConnectorError) as caught:
            await get(http, f"http://127.0.0.1:{port}/")
    assert egress_refusal(caught.value) is None


async def test_unresolvable_name_is_not_a_refusal(connects: list) -> None:
    async with session(EgressPolicy(), fake_dns({})) as http:
        with pytest.raises(aiohttp.ClientConnectorDNSError, match="nowhere.example") as caught:
            await get(http, "https://nowhere.example/")
    assert egress_refusal(caught.value) is None
    assert isinstance(caught.value.__cause__, socket.gaierror)
    assert connects == []


# --- the resolver on its own: what aiohttp is handed --------------------------------------------


async def test_resolver_returns_exactly_the_checked_addresses() -> None:
    dns = fake_dns({"hooks.example": ["93.184.216.34", "2606:2800:220:1::1"]})
    resolver = GuardedResolver(EgressPolicy(), dns)
    results = await resolver.resolve("hooks.example", 443, family=socket.AF_UNSPEC)
    assert [(r["hostname"], r["host"], r["port"], r["family"]) for r in results] == [
        ("hooks.example", "93.184.216.34", 443, socket.AF_INET),
        ("hooks.example", "2606:2800:220:1::1", 443, socket.AF_INET6),
    ]
    [only_v4] = await resolver.resolve("hooks.example", 443, family=socket.AF_INET)
    assert only_v4["host"] == "93.184.216.34"
    await resolver.close()


async def test_resolver_refuses_the_host_if_any_address_is_blocked_even_outside_the_family() -> None:
    resolver = GuardedResolver(EgressPolicy(), fake_dns({"mixed.example": ["93.184.216.34", "fd00::1"]}))
    with pytest.raises(EgressBlocked, match="fd00::1 \\(resolved from mixed.example\\) is unique local"):
        await resolver.resolve("mixed.example", 443, family=socket.AF_INET)


async def test_resolver_garbage_is_an_error_not_a_refusal() -> None:
    resolver = GuardedResolver(EgressPolicy(), fake_dns({"odd.example": ["evil.example"], "empty.example": []}))
    for host, message in (("odd.example", "not an IP address"), ("empty.example", "resolved to no addresses")):
        with pytest.raises(OSError, match=message) as caught:
            await resolver.resolve(host, 443)
        assert egress_refusal(caught.value) is None


# --- TLS: SNI and certificate checks use the hostname, the socket the checked address ------------


def self_signed(directory: Path, hostname: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


async def test_tls_uses_the_hostname_while_tcp_uses_the_checked_address(tmp_path: Path, connects: list) -> None:
    cert, key = self_signed(tmp_path, "hooks.example")
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    server_names: list[str | None] = []
    server_context.sni_callback = lambda _sock, name, _context: server_names.append(name)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    client_context = ssl.create_default_context(cafile=str(cert))  # trusts "hooks.example" only
    try:
        async with session(EgressPolicy(["127.0.0.0/8"]), fake_dns({"hooks.example": ["127.0.0.1"]})) as http:
            assert await get(http, f"https://hooks.example:{port}/hook", ssl=client_context) == (200, "ok")
    finally:
        server.close()
        await server.wait_closed()
    assert connects == [("127.0.0.1", port)]
    assert server_names == ["hooks.example"]  # and the certificate for that name verified
