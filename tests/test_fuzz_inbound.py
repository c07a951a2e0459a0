"""Property-based tests of ``POST /webhooks/freshbooks/{endpoint_key}`` with whatever a client can send.

Hypothesis builds bodies (arbitrary bytes, odd forms, other encodings, sizes around
``INBOUND_MAX_BODY_BYTES``, chunked uploads) and header lists (content-type variants, charset
parameters, duplicated headers, Content-Length lies, bogus signatures) and posts them to the running
app, in-process through ``httpx.ASGITransport`` on the service's own event loop: the app's
lifespan has run, and header bytes reach it exactly as generated, which a real HTTP client would
not allow for a Content-Length lie. Each request has a deadline (no hang). The properties are the
README's contract: never a 5xx; each refusal is the documented status as a JSON error; a refused
request stores nothing; a correctly signed body is accepted and stored byte for byte.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from urllib.parse import quote, quote_plus, urlencode

import httpx
import pytest
from conftest import OWNER_ACCOUNT_ID, RunningService
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from webhook_service.freshbooks.signature import MalformedBody, compute_signature, parse_form
from webhook_service.storage import callbacks as callback_store
from webhook_service.storage.models import Callback, InboxEvent

FORM = "application/x-www-form-urlencoded"
SIGNATURE = "X-FreshBooks-Hmac-SHA256"
REQUEST_TIMEOUT = 10.0
"""Seconds one request may take before the test calls it a hang."""
REFUSALS = {400, 401, 413, 415, 422}
"""What a verified callback answers a bad request with (README, "Receiving FreshBooks webhooks")."""

FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI must not turn red at random
    # The service fixture is shared by every example on purpose: state accumulates like in production.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

Header = tuple[bytes, bytes]


# --- the harness ---------------------------------------------------------------------------------


@dataclass
class Inbound:
    """Posts to the running app in-process and reads its inbox, on the app's own event loop."""

    service: RunningService
    callback: Callback
    verifier: str

    @property
    def cap(self) -> int:
        return self.service.runtime.settings.inbound_max_body_bytes

    @property
    def path(self) -> str:
        return f"/webhooks/freshbooks/{self.callback.endpoint_key}"

    def post(self, path: str, headers: list[Header], body: bytes | list[bytes]) -> httpx.Response:
        return self.service.server.run_coroutine(
            _post(self.service.server.app, path, headers, body), timeout=REQUEST_TIMEOUT + 5
        )

    def inbox_count(self) -> int:
        return self.service.server.run_coroutine(_inbox_count(self.service))

    def stored_body(self, inbox_id: int) -> str:
        return self.service.server.run_coroutine(_stored_body(self.service, inbox_id))

    def sign(self, fields: dict[str, str]) -> str:
        return compute_signature(self.verifier, fields)


async def _post(app: object, path: str, headers: list[Header], body: bytes | list[bytes]) -> httpx.Response:
    """One request; a list body goes chunked (no Content-Length unless the headers bring one)."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # type: ignore[arg-type]
    content = body if isinstance(body, bytes) else _chunks(body)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        response = await asyncio.wait_for(client.post(path, headers=headers, content=content), REQUEST_TIMEOUT)
        await response.aread()
        return response


async def _chunks(pieces: list[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def _inbox_count(service: RunningService) -> int:
    async with service.runtime.db.sessions() as session:
        return (await session.execute(select(func.count()).select_from(InboxEvent))).scalar_one()


async def _stored_body(service: RunningService, inbox_id: int) -> str:
    async with service.runtime.db.sessions() as session:
        event = await session.get(InboxEvent, inbox_id)
        assert event is not None
        return event.raw_body


@pytest.fixture
async def inbound(connected, service: RunningService, runtime) -> Inbound:
    async with runtime.db.sessions() as session:
        callbacks = await callback_store.active_for_tenant(session, connected.id)
    [invoice] = [callback for callback in callbacks if callback.event == "invoice"]
    assert invoice.verifier_enc is not None
    return Inbound(service, invoice, runtime.box.decrypt(invoice.verifier_enc))


def assert_refused(inbound: Inbound, response: httpx.Response, before: int, statuses: set[int]) -> None:
    """A documented status, a JSON error quoting the request id, and nothing stored."""
    assert response.status_code in statuses, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()
    assert set(error) == {"error", "message", "request_id"}, error
    assert error["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    assert inbound.inbox_count() == before


def assert_never_a_server_error(inbound: Inbound, response: httpx.Response, before: int) -> None:
    """Accepted and stored once, or refused with a documented status and nothing stored."""
    assert response.status_code < 500, response.text
    if response.status_code == 200:
        answer = response.json()
        if answer == {"status": "verification_started"}:
            assert inbound.inbox_count() == before
        else:
            assert answer["status"] in ("accepted", "duplicate")
            assert inbound.inbox_count() == before + 1
        return
    assert_refused(inbound, response, before, REFUSALS)


# --- strategies ----------------------------------------------------------------------------------

# What an HTTP server lets through in a header value: visible ASCII, obs-text, spaces and tabs.
header_bytes = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f") | st.just("\t"),
    max_size=40,
).map(lambda text: text.encode("latin-1"))
header_text = header_bytes.map(lambda value: value.decode("latin-1"))
header_names = st.from_regex(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,24}", fullmatch=True).map(str.encode)

form_types = st.sampled_from(
    [
        FORM,
        FORM.upper(),
        "Application/X-WWW-Form-URLEncoded",
        f"{FORM}; charset=utf-8",
        f"{FORM};charset=UTF-8",
        f"  {FORM}\t; charset=ISO-8859-1 ; q=1",
        f"{FORM};",
    ]
).map(str.encode)
other_types = (
    st.sampled_from(
        [
            "application/json",
            "text/plain; charset=utf-8",
            "multipart/form-data; boundary=xyz",
            f"{FORM}x",
            f"x{FORM}",
            "application/x-www-form-urlencoded-v2",
            "",
            ";",
            f"text/plain; type={FORM}",
        ]
    ).map(str.encode)
    | header_bytes
).filter(lambda value: value.split(b";", 1)[0].strip().lower() != FORM.encode())

content_length_lies = (
    st.integers(min_value=0, max_value=2**70).map(lambda n: str(n).encode())
    | st.sampled_from([b"", b"-1", b"+5", b" 5", b"5, 5", b"0x10", b"1e3", b"\xb2", b"\xb9\xb3", b"9" * 5000])
    | header_bytes
)

length_garbage = (
    st.sampled_from([b"", b"-1", b"+5", b"5, 5", b"0x10", b"1e3", b"5.0", b"\xb2", b"\xb9\xb3", b"\xbd"]) | header_bytes
).filter(lambda value: not value.strip(b" \t").isdigit())  # bytes.isdigit: ASCII digits only
extra_headers = st.lists(st.tuples(header_names, header_bytes), max_size=4)
# Headers that must not change the outcome of a correct request (the kept ones included).
harmless_headers = st.lists(
    st.tuples(st.sampled_from([b"user-agent", b"X-Request-ID", b"x-forwarded-for", b"accept", b"x-a"]), header_bytes),
    max_size=4,
)

no_nul = st.characters(codec="utf-8", exclude_characters="\x00")  # a NUL makes any form malformed (tested below)
field_text = st.text(no_nul, max_size=30)
extra_fields = st.dictionaries(field_text, field_text, max_size=5).map(
    lambda fields: {key: value for key, value in fields.items() if key != "name"}
)
# Verbs are what FreshBooks sends, or any identifier it may add (the noun decides the callback);
# a name that is not noun.verb is refused at the door (tested below).
verbs = st.sampled_from(["create", "update", "delete", "sendByEmail"]) | st.from_regex(
    r"[A-Za-z][A-Za-z0-9_]{0,40}", fullmatch=True
)
object_ids = st.integers(min_value=0, max_value=10**18).map(str) | st.text(no_nul, max_size=64)


@st.composite
def event_fields(draw: st.DrawFn, noun: str = "invoice") -> dict[str, str]:
    """A FreshBooks-looking event, with odd extra fields in a random order."""
    fields = {
        "name": f"{noun}.{draw(verbs)}",
        "object_id": draw(object_ids),
        "account_id": OWNER_ACCOUNT_ID,
        "business_id": "439000",
        "identity_id": "12345",
        **draw(extra_fields),
    }
    items = draw(st.permutations(list(fields.items())))
    return dict(items)


def encode_form(fields: dict[str, str], quote_via: Callable[..., str]) -> bytes:
    return urlencode(list(fields.items()), quote_via=quote_via).encode("ascii")


quoting = st.sampled_from([quote_plus, quote])


@st.composite
def split(draw: st.DrawFn, body: bytes) -> bytes | list[bytes]:
    """The body whole (with its Content-Length) or chunked at random points (without one)."""
    if not body or not draw(st.booleans()):
        return body
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=5)))
    edges = [0, *cuts, len(body)]
    return [body[start:end] for start, end in zip(edges, edges[1:], strict=False)]


def signature_header(draw: st.DrawFn, signature: str) -> Header:
    name = draw(st.sampled_from([SIGNATURE, SIGNATURE.lower(), SIGNATURE.upper()]))
    padding = draw(st.sampled_from(["", " ", "\t"]))
    return name.encode(), f"{padding}{signature}{padding}".encode()


def not_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


junk_form = st.lists(
    st.sampled_from([b"&", b"=", b"%", b"%zz", b"%00", b"+", b";", b"name", b"invoice.create", b"%C3%28", b"\xff"])
    | st.binary(max_size=8),
    max_size=20,
).map(b"".join)
other_encodings = st.tuples(
    st.dictionaries(field_text, field_text, min_size=1, max_size=4), st.sampled_from(["latin-1", "utf-16", "cp1252"])
).map(lambda pair: "&".join(f"{k}={v}" for k, v in pair[0].items()).encode(pair[1], errors="replace"))
any_body = st.binary(max_size=1024) | junk_form | other_encodings


# --- properties ----------------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_a_correctly_signed_event_is_accepted_and_stored_byte_for_byte(inbound: Inbound, data: st.DataObject):
    fields = data.draw(event_fields())
    body = encode_form(fields, data.draw(quoting))
    headers = [
        (b"content-type", data.draw(form_types)),
        signature_header(data.draw, inbound.sign(fields)),
        *data.draw(harmless_headers),
    ]
    headers = data.draw(st.permutations(headers))
    before = inbound.inbox_count()

    response = inbound.post(inbound.path, headers, data.draw(split(body)))

    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["status"] in ("accepted", "duplicate")
    assert inbound.inbox_count() == before + 1
    assert inbound.stored_body(answer["id"]) == body.decode("ascii")


@FUZZ
@given(data=st.data())
def test_arbitrary_requests_to_a_verified_callback_never_fail(inbound: Inbound, data: st.DataObject):
    body = data.draw(any_body | event_fields().map(lambda f: encode_form(f, quote_plus)))
    headers: list[Header] = data.draw(st.lists(st.tuples(st.just(b"content-type"), form_types | other_types)))
    headers += data.draw(st.lists(st.tuples(st.just(b"content-length"), content_length_lies), max_size=2))
    headers += data.draw(
        st.lists(st.tuples(st.sampled_from([SIGNATURE.encode(), SIGNATURE.lower().encode()]), header_bytes), max_size=2)
    )
    headers += data.draw(extra_headers)
    before = inbound.inbox_count()

    response = inbound.post(inbound.path, data.draw(st.permutations(headers)), data.draw(split(body)))

    assert_never_a_server_error(inbound, response, before)


@FUZZ
@given(data=st.data())
def test_each_kind_of_bad_request_gets_its_documented_status(inbound: Inbound, data: st.DataObject):
    fields = data.draw(event_fields())
    body = encode_form(fields, quote_plus)
    signature = signature_header(data.draw, inbound.sign(fields))
    form = (b"content-type", data.draw(form_types))
    kinds = ["content-type", "too-large", "length-lie", "length-garbage", "not-utf8", "nul", "signature", "noun"]
    kind = data.draw(st.sampled_from(kinds))
    if kind == "content-type":  # checked before anything is read
        headers, status = [(b"content-type", data.draw(other_types)), signature], 415
        if data.draw(st.booleans()):
            headers = [signature]  # no Content-Type at all
    elif kind == "too-large":  # declared, or counted while a chunked body streams in
        size = data.draw(st.integers(inbound.cap + 1, inbound.cap + 64))
        body = body + b"&pad=" + b"x" * max(0, size - len(body) - 5)
        headers, status = [form, signature], 413
    elif kind == "length-lie":  # refused on the header alone, however long the number
        declared = data.draw(st.integers(inbound.cap + 1, 2**70).map(lambda n: str(n).encode()) | st.just(b"9" * 5000))
        headers, status = [form, signature, (b"content-length", declared)], 413
    elif kind == "length-garbage":
        declared = data.draw(length_garbage)
        headers, status = [form, signature, (b"content-length", declared)], 400
    elif kind == "not-utf8":
        text = data.draw(st.text(min_size=1, max_size=20).filter(lambda t: any(ord(c) > 127 for c in t)))
        body = data.draw(
            st.sampled_from([body + b"&note=" + text.encode("latin-1", "replace"), text.encode("utf-16")]).filter(
                not_utf8
            )
        )
        headers, status = [form, signature], 400
    elif kind == "nul":  # raw or percent-encoded, signed or not: the inbox cannot keep it
        fields = {**fields, data.draw(st.sampled_from(["note", "name", "object_id"])): "a\x00b"}
        body = data.draw(st.sampled_from([encode_form(fields, quote_plus), body + b"&note=a\x00b"]))
        headers, status = [form, signature_header(data.draw, inbound.sign(fields))], 400
    elif kind == "signature":  # missing, garbled, or another body's
        other = data.draw(st.sampled_from(["", "bogus", inbound.sign({**fields, "object_id": "0"})]) | header_text)
        headers, status = [form, *([] if other == "" else [(SIGNATURE.encode(), other.encode("latin-1"))])], 401
        if other.strip() == inbound.sign(fields):
            return
    else:  # signed correctly, but for a noun another callback receives
        fields = data.draw(event_fields(noun="client"))
        body = encode_form(fields, quote_plus)
        headers, status = [form, signature_header(data.draw, inbound.sign(fields))], 422
    before = inbound.inbox_count()

    response = inbound.post(inbound.path, headers, data.draw(split(body)))

    assert_refused(inbound, response, before, {status})


@FUZZ
@given(
    key=st.text(st.characters(codec="utf-8", exclude_characters="/"), min_size=1, max_size=80),  # one segment
    body=any_body,
    headers=st.lists(st.tuples(st.sampled_from([b"content-type", b"content-length"]), header_bytes), max_size=3),
)
def test_unknown_keys_get_404_whatever_the_request(inbound: Inbound, key: str, body: bytes, headers: list[Header]):
    path = "/webhooks/freshbooks/" + quote(key, safe="")
    if key == inbound.callback.endpoint_key:
        return
    before = inbound.inbox_count()

    response = inbound.post(path, headers, body)

    assert_refused(inbound, response, before, {404})


def test_a_signed_verification_lookalike_for_another_callback_id_is_refused(inbound: Inbound):
    """callback.verify naming a different callback changes nothing and is a documented 400."""
    assert inbound.callback.freshbooks_callback_id is not None
    fields = {"name": "callback.verify", "verifier": "v", "object_id": str(inbound.callback.freshbooks_callback_id + 1)}
    before = inbound.inbox_count()
    response = inbound.post(inbound.path, [(b"content-type", FORM.encode())], encode_form(fields, quote_plus))
    assert_refused(inbound, response, before, {400})
    assert response.json()["error"] == "callback_id_mismatch"


# --- regressions the fuzzing found ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("declared", "status"),
    # Leading zeros are still a small number: past the length check, the bogus signature is refused.
    [(b"\xb2", 400), (b"\xb9\xb3", 400), (b"9" * 5000, 413), (b"0" * 30 + b"34", 401)],
)
def test_content_length_is_ascii_digits_and_any_length_of_them(inbound: Inbound, declared: bytes, status: int):
    """``str.isdigit`` accepts ``²`` and ``int`` refuses it; ``int`` also refuses 5000 digits: both were 500s."""
    headers = [(b"content-type", FORM.encode()), (b"content-length", declared), (SIGNATURE.encode(), b"x")]
    before = inbound.inbox_count()
    response = inbound.post(inbound.path, headers, b"name=invoice.update&object_id=7000")
    assert_refused(inbound, response, before, {status})


@pytest.mark.parametrize("body", [b"name=invoice.update&object_id=%00", b"name=invoice.update&note=a\x00b"])
def test_a_signed_form_holding_nul_is_malformed(inbound: Inbound, body: bytes):
    """A NUL reached the inbox insert, which PostgreSQL refuses: a 500 there."""
    with pytest.raises(MalformedBody):
        parse_form(body)
    fields = {"name": "invoice.update", "object_id": "\x00"}
    headers = [(b"content-type", FORM.encode()), (SIGNATURE.encode(), inbound.sign(fields).encode())]
    before = inbound.inbox_count()
    response = inbound.post(inbound.path, headers, body)
    assert_refused(inbound, response, before, {400})
    assert response.json()["error"] == "malformed_body"


@pytest.mark.parametrize("key", ["a%00b", "%C3%A9t%C3%A9", "x" * 65, "key.with.dots"])
def test_a_key_that_cannot_be_an_endpoint_key_is_404_without_a_query(inbound: Inbound, key: str):
    """A NUL in the key reached the callbacks query, which PostgreSQL refuses: a 500 there."""
    before = inbound.inbox_count()
    response = inbound.post(f"/webhooks/freshbooks/{key}", [(b"content-type", FORM.encode())], b"name=invoice.create")
    assert_refused(inbound, response, before, {404})
    assert response.json()["error"] == "unknown_endpoint"


OVERLONG = [{"object_id": "1" * 65}, {"name": "invoice." + "v" * 121}, {"account_id": "A" * 65}]


@pytest.mark.parametrize("fields", OVERLONG)
def test_a_signed_event_with_an_overlong_value_is_refused(inbound: Inbound, fields: dict[str, str]):
    """Longer than their columns: was a 500 on PostgreSQL (SQLite stored them)."""
    fields = {"name": "invoice.update", "object_id": "7", **fields}
    headers = [(b"content-type", FORM.encode()), (SIGNATURE.encode(), inbound.sign(fields).encode())]
    before = inbound.inbox_count()
    response = inbound.post(inbound.path, headers, encode_form(fields, quote_plus))
    assert_refused(inbound, response, before, {400})
    assert response.json()["error"] == "malformed_body"


@pytest.mark.parametrize("name", ["invoice.", "invoice.sent by email", "invoice.\u00e9", "invoice.a.b"])
def test_a_signed_event_that_is_not_noun_dot_verb_is_refused(inbound: Inbound, name: str):
    """It used to be stored, then fail in the processor with a traceback."""
    fields = {"name": name, "object_id": "7"}
    headers = [(b"content-type", FORM.encode()), (SIGNATURE.encode(), inbound.sign(fields).encode())]
    before = inbound.inbox_count()
    response = inbound.post(inbound.path, headers, encode_form(fields, quote_plus))
    assert_refused(inbound, response, before, {400})
