"""The service's JSON answers are the text Starlette's own JSONResponse would write."""

from __future__ import annotations

import pytest
from starlette.responses import JSONResponse as StarletteJSONResponse

from webhook_service.web.responses import JSONResponse

BODIES = [
    {"status": "accepted", "id": 12},
    {"status": "duplicate", "id": 2**40},
    {"error": "not_found", "message": "Ünïcødé — “quoted”, a tab\t, a line\u2028break", "request_id": None},
    {"items": [{"latency_ms": 12.34, "ok": True, "code": None}, {"latency_ms": 3.0, "ok": False}], "next": "c_1"},
    {"big": 2**70},  # past 64 bits: the standard library's way
    [],
]


@pytest.mark.parametrize("body", BODIES)
def test_the_same_bytes_as_starlette(body):
    ours, theirs = JSONResponse(body, status_code=201), StarletteJSONResponse(body, status_code=201)
    assert ours.body == theirs.body
    assert ours.headers["content-type"] == theirs.headers["content-type"] == "application/json"
    assert ours.headers["content-length"] == theirs.headers["content-length"]
