"""The signature check against FreshBooks' published sender code (the simulator's, written apart)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
from urllib.parse import urlencode

import pytest

from webhook_service.freshbooks.signature import MalformedBody, compute_signature, parse_form, verify_signature
from webhook_service.sandbox.simulator import signing

VERIFIER = "scADVVi5QuKuj5qTjVkbJNYQe7V7USpGd"
VECTOR_BODY = b"name=invoice.create&object_id=1234567&account_id=6BApk&business_id=6543&identity_id=1234&user_id=1"
VECTOR_SIGNATURE = "/S03vyYmI7CekM4YXBHUhs9o5rnMtqGLrW3aA8S9gPc="
FIELDS = {
    "name": "invoice.create",
    "object_id": "1234567",
    "account_id": "6BApk",
    "business_id": "6543",
    "identity_id": "1234",
    "user_id": "1",
}


def test_reference_vector():
    assert compute_signature(VERIFIER, parse_form(VECTOR_BODY)) == VECTOR_SIGNATURE
    assert verify_signature(VERIFIER, parse_form(VECTOR_BODY), VECTOR_SIGNATURE)


def test_every_field_order_verifies_and_signatures_differ_by_order():
    seen = set()
    for order in itertools.permutations(FIELDS):
        message = {key: FIELDS[key] for key in order}
        body = signing.encode(message)
        signature = signing.sign(VERIFIER, message)
        assert verify_signature(VERIFIER, parse_form(body), signature)
        seen.add(signature)
    assert len(seen) == 720  # order is part of what is signed


@pytest.mark.parametrize(
    "value",
    [
        "a:b",
        "a,b",
        "https://x.freshbooks.com/a/b",
        "two words",
        "1+1",
        "100%",
        "Tom & Jerry",
        "café",
        "日本",
        "mixed é, 日本: a+b & c/d 50%",
        "",
    ],
)
def test_awkward_values_verify(value):
    message = {"name": "client.update", "object_id": "77", "account_id": "ABC123", "organization": value}
    body = signing.encode(message)
    parsed = parse_form(body)
    assert parsed["organization"] == value
    assert verify_signature(VERIFIER, parsed, signing.sign(VERIFIER, message))


def _sign_json(text: str) -> str:
    return base64.b64encode(hmac.new(VERIFIER.encode(), text.encode(), hashlib.sha256).digest()).decode()


def test_sorted_keys_or_compact_json_do_not_verify():
    fields = parse_form(VECTOR_BODY)
    assert not verify_signature(VERIFIER, fields, _sign_json(json.dumps(fields, sort_keys=True)))
    assert not verify_signature(VERIFIER, fields, _sign_json(json.dumps(fields, separators=(",", ":"))))
    assert not verify_signature("another-verifier", fields, VECTOR_SIGNATURE)
    assert not verify_signature(VERIFIER, fields, "")
    assert not verify_signature(VERIFIER, fields, "not base64 ☃")


def test_non_ascii_is_signed_as_ascii_escapes():
    message = {"name": "client.update", "organization": "日本"}
    parsed = parse_form(urlencode(message).encode())
    assert compute_signature(VERIFIER, parsed) == _sign_json(
        '{"name": "client.update", "organization": "\\u65e5\\u672c"}'
    )


@pytest.mark.parametrize("body", [b"\xff\xfe=1", b"name=a&&", b"novalue", b"name=%E6%97"])
def test_malformed_bodies_are_refused(body):
    with pytest.raises(MalformedBody):
        parse_form(body)


def test_the_documented_example_holds():
    import doctest

    from webhook_service.freshbooks import signature

    assert doctest.testmod(signature) == (0, 2)
    readme = (__import__("pathlib").Path(__file__).parents[1] / "README.md").read_text()
    example = readme.split("```python\n", 1)[1].split("```", 1)[0]
    runner = doctest.DocTestRunner()
    assert runner.run(doctest.DocTestParser().get_doctest(example, {}, "README", None, 0)) == (0, 3)
