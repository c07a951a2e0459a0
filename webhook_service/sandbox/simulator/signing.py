"""How FreshBooks signs and encodes what it POSTs to a callback URI.

Written from FreshBooks' published sender code, and deliberately not shared
with the service's verifier: if the two were one function, a bug in it would
sign and verify the same wrong bytes and every test would still pass.

The signature is computed over Python's *default* ``json.dumps`` of the
fields in message order (separators ``", "``/``": "``, ``ensure_ascii``,
keys unsorted) with every value passed through ``str``; the body is the same
fields form-encoded in the same order. A receiver therefore has to rebuild
the JSON from the raw body in received order to get the same bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import urllib.parse
from collections.abc import Mapping

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
SIGNATURE_HEADER = "X-FreshBooks-Hmac-SHA256"


def sign(verifier: str, message: Mapping[str, object]) -> str:
    """base64(HMAC-SHA256(key=verifier, msg=json.dumps of the str-valued fields))."""
    msg = dict((k, str(v)) for k, v in message.items())  # the sender's code, verbatim
    digest = hmac.new(verifier.encode("utf-8"), json.dumps(msg).encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def encode(message: Mapping[str, object]) -> bytes:
    """The form body, fields in message order (``urlencode`` quotes UTF-8, spaces as ``+``)."""
    return urllib.parse.urlencode(list(message.items())).encode("ascii")
