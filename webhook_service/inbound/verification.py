"""The FreshBooks handshake: PUT the verifier back, and only then trust it.

Anyone can POST a ``callback.verify`` with a made-up verifier. So the verifier becomes the
callback's secret only after FreshBooks has accepted it for the callback that this endpoint key
names, and a verifier FreshBooks refuses changes nothing. It runs after the 200 (FreshBooks waits
for nobody); a failure is recorded on the callback and the next sync asks FreshBooks to resend.
"""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta

from webhook_service.contract import operational
from webhook_service.core.logs import get_logger
from webhook_service.freshbooks.callbacks import CallbacksAPI
from webhook_service.freshbooks.errors import FreshBooksError
from webhook_service.freshbooks.tokens import TenantUnavailable
from webhook_service.runtime import Runtime
from webhook_service.storage import callbacks as callback_store
from webhook_service.storage import outbox
from webhook_service.storage import tenants as tenant_store
from webhook_service.storage.columns import utcnow
from webhook_service.storage.models import CallbackStatus

log = get_logger(__name__)


async def complete_handshake(runtime: Runtime, callback_id: str, freshbooks_callback_id: int, verifier: str) -> bool:
    """PUT ``verifier`` for ``freshbooks_callback_id``; store it if FreshBooks accepts. True if stored."""
    api = CallbacksAPI(runtime.freshbooks)
    attempts = runtime.settings.callback_verify_attempts
    last_error = ""
    for attempt in range(1, attempts + 1):
        async with runtime.db.sessions() as session:
            callback = await callback_store.get(session, callback_id)
            tenant = await tenant_store.get(session, callback.tenant_id) if callback else None
        if callback is None or tenant is None or not callback.active:
            return False
        try:
            remote = await api.get(tenant, freshbooks_callback_id)
            if remote.uri != callback.uri:
                log.warning(
                    "verify_refused",
                    callback_id=callback_id,
                    reason="callback_uri_mismatch",
                    freshbooks_callback_id=freshbooks_callback_id,
                )
                return False
            confirmed = await api.verify(tenant, freshbooks_callback_id, verifier)
        except FreshBooksError as exc:
            if not exc.is_retryable:
                # FreshBooks refused: a forged or stale verifier, or a callback that is not ours.
                log.warning("verify_refused", callback_id=callback_id, status=exc.status, error=exc.message)
                return False
            last_error = str(exc)
        except TenantUnavailable as exc:
            last_error = str(exc)
            break
        else:
            if confirmed.verified:
                await _store_verifier(runtime, callback_id, freshbooks_callback_id, verifier)
                return True
            last_error = "FreshBooks accepted the verifier but reports the callback unverified"
        if attempt < attempts:
            await asyncio.sleep(random.uniform(0.5, 1.5) * 2 ** (attempt - 1))
    await record_failure(runtime, callback_id, f"verification failed: {last_error}")
    return False


async def _store_verifier(runtime: Runtime, callback_id: str, freshbooks_callback_id: int, verifier: str) -> None:
    now = utcnow()
    async with runtime.db.sessions() as session:
        callback = await callback_store.get(session, callback_id, lock=True)
        if callback is None:
            return
        if callback.verifier_enc and runtime.box.decrypt(callback.verifier_enc) != verifier:
            # a re-verification: the old verifier keeps working for the grace period
            callback.previous_verifier_enc = callback.verifier_enc
            callback.previous_verifier_until = now + timedelta(seconds=runtime.settings.callback_verifier_grace)
        callback.verifier_enc = runtime.box.encrypt(verifier)
        callback.freshbooks_callback_id = freshbooks_callback_id
        callback.status = CallbackStatus.VERIFIED.value
        callback.verified_at = now
        callback.last_error = None
        callback.updated_at = now
        await session.commit()
    runtime.callbacks.forget(callback.endpoint_key)
    log.info("callback_verified", callback_id=callback_id, freshbooks_callback_id=freshbooks_callback_id)


async def record_failure(runtime: Runtime, callback_id: str, error: str) -> None:
    """Mark a callback FreshBooks refused as failed (a verified one keeps working and only notes the
    error); the first time, ``callback.failed`` tells the subscribers that ask for it."""
    now = utcnow()
    async with runtime.db.sessions() as session:
        callback = await callback_store.get(session, callback_id)
        if callback is None:
            return
        newly_failed = callback.status == CallbackStatus.PENDING_VERIFICATION.value
        if callback.status != CallbackStatus.VERIFIED.value:
            callback.status = CallbackStatus.FAILED.value
        callback.last_error = error
        callback.updated_at = now
        if newly_failed:
            await outbox.emit(session, operational.callback_failed(callback, reason=error, at=now), now=now)
        await session.commit()
    log.error("callback_failed", callback_id=callback_id, error=error)
