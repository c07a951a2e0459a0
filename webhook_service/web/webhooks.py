"""``POST /webhooks/freshbooks/{endpoint_key}``: where FreshBooks delivers.

The body is read with a cap (``INBOUND_MAX_BODY_BYTES``) whether or not a Content-Length is sent,
so a chunked upload cannot grow past it; FreshBooks' own messages are well under 1 KiB.
"""

from __future__ import annotations

import re
import time

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from webhook_service.core.logs import get_logger
from webhook_service.core.metrics import INBOUND_ACCEPTED, INBOUND_REFUSED, INGEST_SECONDS, labelled
from webhook_service.inbound.receiver import Refusal, accept, find_callback
from webhook_service.runtime import Runtime
from webhook_service.web.errors import error_response
from webhook_service.web.middleware import describe_request
from webhook_service.web.responses import JSONResponse

log = get_logger("webhook_service.inbound")

FORM_TYPE = "application/x-www-form-urlencoded"
_ENDPOINT_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What the registrar's keys look like (``secrets.token_urlsafe``); anything else is no key, asked of
no database (PostgreSQL cannot even compare a string holding NUL)."""
_DIGITS = re.compile(r"[0-9]+")
"""A Content-Length: ASCII digits only (``str.isdigit`` also takes ``²``, which ``int`` refuses)."""


async def receive(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    started = time.perf_counter()
    arrived = runtime.callbacks.now()
    try:
        endpoint_key = request.path_params["endpoint_key"]
        if not _ENDPOINT_KEY.fullmatch(endpoint_key):
            raise Refusal(404, "unknown_endpoint", "No callback is registered at this URI.")
        callback = await find_callback(runtime, endpoint_key)
        media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type != FORM_TYPE:
            raise Refusal(415, "unsupported_media_type", f"Content-Type must be {FORM_TYPE}.")
        body = await _read_capped(request, runtime.settings.inbound_max_body_bytes)
        headers = {k.lower(): v for k, v in request.headers.items()}
        outcome = await accept(runtime, callback, body, headers, arrived=arrived)
    except Refusal as refusal:
        log.warning("inbound_refused", reason=refusal.reason, status=refusal.status, path=request.url.path[:40])
        labelled(INBOUND_REFUSED, refusal.reason).inc()
        response = error_response(request, refusal.status, refusal.reason, refusal.message)
        if refusal.retry_after is not None:
            response.headers["Retry-After"] = str(refusal.retry_after)
        return response
    if outcome.kind == "verification":
        labelled(INBOUND_ACCEPTED, "verification").inc()
        return JSONResponse({"status": "verification_started"})
    labelled(INBOUND_ACCEPTED, "duplicate" if outcome.duplicate else "event").inc()
    INGEST_SECONDS.observe(time.perf_counter() - started)
    describe_request(  # the request's one line says what the webhook became (no line of its own)
        request,
        inbox_id=outcome.inbox_id,
        callback_id=callback.id,
        tenant_id=callback.tenant_id,
        event_name=outcome.event_name,
        object_id=outcome.object_id,
        duplicate=outcome.duplicate,
    )
    return JSONResponse(
        {"status": "duplicate" if outcome.duplicate else "accepted", "id": outcome.inbox_id}, status_code=200
    )


async def _read_capped(request: Request, cap: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not _DIGITS.fullmatch(declared):
            raise Refusal(400, "bad_content_length", "Content-Length is not a number.")
        digits = declared.lstrip("0")
        if len(digits) > len(str(cap)) or int(digits or "0") > cap:
            raise Refusal(413, "body_too_large", f"The body exceeds {cap} bytes.")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise Refusal(413, "body_too_large", f"The body exceeds {cap} bytes.")
            chunks.append(chunk)
    except ClientDisconnect as exc:
        raise Refusal(400, "client_disconnected", "The request body was cut off.") from exc
    return b"".join(chunks)


routes = [Route("/webhooks/freshbooks/{endpoint_key}", receive, methods=["POST"])]
