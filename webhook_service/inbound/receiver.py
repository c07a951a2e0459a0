"""What happens to a POST on a callback URI, once its body has been read.

Each refusal is a :class:`Refusal` with the status to answer and a reason for the log; nothing is
written for a refused request. An accepted event is in the inbox (committed) before this returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from webhook_service.core.batching import QueueFull
from webhook_service.core.logs import get_logger
from webhook_service.core.metrics import STORAGE_UNAVAILABLE
from webhook_service.freshbooks.signature import MalformedBody, parse_form, verify_signature
from webhook_service.inbound.verification import complete_handshake
from webhook_service.runtime import Runtime
from webhook_service.storage import inbox
from webhook_service.storage.columns import utcnow
from webhook_service.storage.database import unavailable
from webhook_service.storage.models import Callback, CallbackStatus

log = get_logger(__name__)

SIGNATURE_HEADER = "x-freshbooks-hmac-sha256"
VERIFY_EVENT = "callback.verify"
#: ``noun.verb`` as FreshBooks names events (``invoice.sendByEmail``), within the stored column.
EVENT_NAME = re.compile(r"[a-z][a-z_]{0,62}\.[A-Za-z][A-Za-z0-9_]{0,62}")
MAX_ID_LENGTH = 64
#: Headers kept with an inbox event: enough to re-check the signature and trace the sender.
KEPT_HEADERS = ("content-type", "user-agent", SIGNATURE_HEADER, "x-request-id", "x-forwarded-for")


RETRY_AFTER_SECONDS = 5
"""What a webhook refused for the database's sake (503) is told to wait before sending again."""


class Refusal(Exception):
    def __init__(self, status: int, reason: str, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after


@contextlib.contextmanager
def storage_refusals() -> Iterator[None]:
    """Turn a failure of the database's state (busy, full, failing, or the inbox queue full) into
    the 503 a webhook gets, with ``Retry-After``: nothing of it was stored. Anything else passes."""
    try:
        yield
    except Exception as error:
        reason = "queue_full" if isinstance(error, QueueFull) else unavailable(error)
        if reason is None:
            raise
        STORAGE_UNAVAILABLE.labels(reason=reason).inc()
        raise Refusal(
            503,
            f"storage_{reason}" if reason != "queue_full" else reason,
            "The service cannot store this delivery right now; nothing was kept. Send it again later.",
            retry_after=RETRY_AFTER_SECONDS,
        ) from error


@dataclass(frozen=True)
class Accepted:
    """What a delivery became: for an event, its inbox row, and what the request's log line says of it."""

    kind: str  # "event" or "verification"
    inbox_id: int | None = None
    duplicate: bool = False
    event_name: str | None = None
    object_id: str | None = None


#: Refusals that a cached copy of the callback may have caused: asked again with the stored row.
_STALE_REASONS = frozenset({"callback_not_verified", "bad_signature", "event_not_subscribed", "callback_id_mismatch"})


async def find_callback(runtime: Runtime, endpoint_key: str, *, read_after: float | None = None) -> Callback:
    """The callback at ``endpoint_key``: a cached copy, or with ``read_after`` (a time of
    ``runtime.callbacks.now``) the row as read then or later (see
    :class:`~webhook_service.storage.callbacks.CallbackCache`)."""
    callback = runtime.callbacks.cached(endpoint_key) if read_after is None else None
    if callback is None:
        # a read: bounded like the write, so a busy database answers 503 in time, not late
        with storage_refusals():
            async with asyncio.timeout(runtime.settings.inbound_commit_timeout):
                callback = await runtime.callbacks.get(endpoint_key, read_after=read_after)
    if callback is None:
        raise Refusal(404, "unknown_endpoint", "No callback is registered at this URI.")
    return callback


async def accept(
    runtime: Runtime, callback: Callback, body: bytes, headers: dict[str, str], *, arrived: float
) -> Accepted:
    """Take a delivery to ``callback``; ``arrived``: when the request came (``runtime.callbacks.now``),
    so a refusal the callback's cached copy may have caused asks for the row as read since."""
    try:
        fields = parse_form(body)
    except MalformedBody as exc:
        raise Refusal(400, "malformed_body", "The body is not valid form-urlencoded UTF-8.") from exc
    name = fields.get("name")
    if not name:
        raise Refusal(400, "malformed_body", "The form has no 'name' field.")
    try:
        return await _accept_fields(runtime, callback, fields, body, headers)
    except Refusal as refusal:
        if refusal.reason not in _STALE_REASONS:
            raise
        latest = await find_callback(runtime, callback.endpoint_key, read_after=arrived)
        return await _accept_fields(runtime, latest, fields, body, headers)


async def _accept_fields(
    runtime: Runtime, callback: Callback, fields: dict[str, str], body: bytes, headers: dict[str, str]
) -> Accepted:
    if fields["name"] == VERIFY_EVENT:
        return _start_handshake(runtime, callback, fields)
    return await _record_event(runtime, callback, fields, body, headers)


def _start_handshake(runtime: Runtime, callback: Callback, fields: dict[str, str]) -> Accepted:
    verifier, object_id = fields.get("verifier", ""), fields.get("object_id", "")
    if not verifier or not object_id.isdigit():
        raise Refusal(400, "malformed_verification", "callback.verify needs a verifier and a numeric object_id.")
    if callback.freshbooks_callback_id is not None and int(object_id) != callback.freshbooks_callback_id:
        raise Refusal(400, "callback_id_mismatch", "object_id does not name the callback at this URI.")
    runtime.tasks.spawn(
        complete_handshake(runtime, callback.id, int(object_id), verifier), name=f"verify:{callback.id}"
    )
    log.info("verification_received", callback_id=callback.id, freshbooks_callback_id=int(object_id))
    return Accepted("verification")


async def _record_event(
    runtime: Runtime, callback: Callback, fields: dict[str, str], body: bytes, headers: dict[str, str]
) -> Accepted:
    if callback.status != CallbackStatus.VERIFIED.value or not callback.verifier_enc:
        raise Refusal(403, "callback_not_verified", "This callback has not completed verification.")
    signature = headers.get(SIGNATURE_HEADER)
    if not signature:
        raise Refusal(401, "missing_signature", "X-FreshBooks-Hmac-SHA256 is required.")
    now = utcnow()
    if not _signed_by_a_current_verifier(runtime, callback, fields, signature, now):
        raise Refusal(401, "bad_signature", "The signature does not match.")
    name = fields["name"]
    if not EVENT_NAME.fullmatch(name):
        raise Refusal(400, "malformed_body", "The form's name is not a FreshBooks event name (noun.verb).")
    if any(len(fields.get(key) or "") > MAX_ID_LENGTH for key in ("object_id", "account_id", "business_id")):
        raise Refusal(400, "malformed_body", f"An id in the form is longer than {MAX_ID_LENGTH} characters.")
    if name.split(".", 1)[0] != callback.event:
        raise Refusal(422, "event_not_subscribed", f"This callback receives {callback.event} events only.")
    kept = {key: headers[key] for key in KEPT_HEADERS if key in headers}
    with storage_refusals():
        event = await runtime.inbox_writer.submit(
            inbox.Arrival(callback.id, callback.tenant_id, fields, body, kept, now)
        )
    duplicate = event.duplicate_of is not None
    due = not duplicate or event.next_attempt_at is not None  # a new event, or a recheck
    if due and event.lease_owner is None:  # not handed over: wake the processor to claim it
        runtime.signals.inbox_ready()
    return Accepted("event", event.id, duplicate, name, fields.get("object_id"))


def _signed_by_a_current_verifier(
    runtime: Runtime, callback: Callback, fields: dict[str, str], signature: str, now: datetime
) -> bool:
    assert callback.verifier_enc is not None
    if verify_signature(runtime.box.decrypt(callback.verifier_enc), fields, signature):
        return True
    previous_valid = (
        callback.previous_verifier_enc is not None
        and callback.previous_verifier_until is not None
        and callback.previous_verifier_until > now
    )
    return previous_valid and verify_signature(
        runtime.box.decrypt(callback.previous_verifier_enc or ""), fields, signature
    )
