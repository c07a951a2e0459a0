"""The ``X-FreshBooks-Hmac-SHA256`` check.

FreshBooks signs ``json.dumps`` of the form fields, built in Python as
``dict((k, str(v)) for k, v in message.items())``: default separators (``", "``, ``": "``),
``ensure_ascii=True``, keys in the order they were sent, not sorted. So the receiver parses the raw
body in received order, keeps every value as a string and serializes the same way; compact JSON,
sorted keys or a re-ordered dict never match.

>>> fields = parse_form(b"name=invoice.create&object_id=1234567&account_id=6BApk"
...                     b"&business_id=6543&identity_id=1234&user_id=1")
>>> compute_signature("scADVVi5QuKuj5qTjVkbJNYQe7V7USpGd", fields)
'/S03vyYmI7CekM4YXBHUhs9o5rnMtqGLrW3aA8S9gPc='
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from urllib.parse import parse_qsl


class MalformedBody(ValueError):
    """The body is not a well-formed ``application/x-www-form-urlencoded`` document."""


def parse_form(body: bytes) -> dict[str, str]:
    """Form fields in received order, values as strings, ``+`` and ``%XX`` decoded as UTF-8.

    A repeated key keeps its first position and its last value, exactly as ``dict(...)`` over the
    sender's pairs would. A NUL character, raw or ``%00``, makes the body malformed: FreshBooks
    never sends one, and the inbox cannot keep one (PostgreSQL text refuses it).
    """
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True, encoding="utf-8", errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedBody(str(exc)) from exc
    if "\x00" in text or any("\x00" in key or "\x00" in value for key, value in pairs):
        raise MalformedBody("the form contains a NUL character")
    return dict(pairs)


def compute_signature(verifier: str, fields: dict[str, str]) -> str:
    message = json.dumps(fields).encode("utf-8")
    return base64.b64encode(hmac.new(verifier.encode("utf-8"), message, hashlib.sha256).digest()).decode("ascii")


def verify_signature(verifier: str, fields: dict[str, str], signature: str) -> bool:
    """True when ``signature`` is FreshBooks' signature of ``fields`` under ``verifier``.

    Constant-time comparison; a missing or garbled signature is simply not valid.
    """
    expected = compute_signature(verifier, fields)
    return hmac.compare_digest(expected.encode("ascii"), signature.strip().encode("utf-8", "replace"))
