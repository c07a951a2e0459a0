"""The wired-up service: settings, database, secret box, HTTP pool, OAuth, tokens, API client.

The HTTP app (in its lifespan) and every CLI command open the same :class:`Runtime`, so there is
one way to reach each piece and one place that builds it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from webhook_service.config import ConfigurationError, Settings
from webhook_service.core.batching import Batcher
from webhook_service.core.crypto import SecretBox, SecretKeyError, dev_key
from webhook_service.core.egress import EgressPolicy, guarded_session
from webhook_service.core.pacing import Pace
from webhook_service.core.signals import Capacity, Lane, Wakeup
from webhook_service.core.tasks import TaskTracker
from webhook_service.freshbooks import transport
from webhook_service.freshbooks.catalogue import subscribed_nouns
from webhook_service.freshbooks.client import FreshBooksClient
from webhook_service.freshbooks.oauth import OAuthClient
from webhook_service.freshbooks.tokens import TokenManager
from webhook_service.storage import deliveries as claims
from webhook_service.storage import inbox, migrate
from webhook_service.storage.callbacks import CallbackCache
from webhook_service.storage.database import Database
from webhook_service.storage.inbox import Arrival, HandedInboxEvent, Recorded
from webhook_service.storage.leased import HandedDelivery


def secret_box_from_settings(settings: Settings) -> SecretBox:
    """Build the box, or refuse clearly with a :class:`ConfigurationError` naming the setting:
    without a key, secrets would sit in the database in clear."""
    if settings.secret_key is not None and settings.secret_key.get_secret_value().strip():
        try:
            return SecretBox(settings.secret_key.get_secret_value().split(","))
        except SecretKeyError as exc:
            raise ConfigurationError(str(exc), setting="SECRET_KEY") from exc
    if not settings.dev_mode:
        raise ConfigurationError(
            "SECRET_KEY is not set. Tokens and verifiers are encrypted at rest, so the service "
            "refuses to start without a key. Set SECRET_KEY (generate one with "
            "`webhook-service generate-secret-key`), or set DEV_MODE=true to use a development "
            f"key stored in {settings.dev_secret_key_file} (never in production).",
            setting="SECRET_KEY",
        )
    try:
        return SecretBox([dev_key(Path(settings.dev_secret_key_file))])
    except OSError as exc:
        reason = f"{exc.strerror}: {exc.filename!r}" if exc.strerror and exc.filename else str(exc)
        raise ConfigurationError(
            f"DEV_SECRET_KEY_FILE: cannot create or read the development key {settings.dev_secret_key_file!r} "
            f"({reason}); make its directory writable, point DEV_SECRET_KEY_FILE elsewhere, or set SECRET_KEY",
            setting="DEV_SECRET_KEY_FILE",
        ) from exc


class Signals:
    """This process's wake-ups, and the in-memory hand-overs between its stages (:mod:`~.core.signals`)."""

    def __init__(self, new_token: Callable[[], str]) -> None:
        self._inbox = Wakeup()
        self._deliveries = Wakeup()
        self.inbox_lane: Lane[HandedInboxEvent] = Lane(new_token)
        self.delivery_lane: Lane[HandedDelivery] = Lane(new_token)

    def inbox_ready(self) -> None:
        self._inbox.set()

    def deliveries_ready(self) -> None:
        self._deliveries.set()

    async def wait_inbox(self, timeout: float) -> None:
        await self._inbox.wait(timeout)

    async def wait_deliveries(self, timeout: float) -> None:
        await self._deliveries.wait(timeout)


@dataclass
class Runtime:
    settings: Settings
    db: Database
    box: SecretBox
    http: aiohttp.ClientSession
    """FreshBooks only, its API and its token endpoint (:mod:`~webhook_service.freshbooks.transport`)."""
    oauth: OAuthClient
    tokens: TokenManager
    freshbooks: FreshBooksClient
    tasks: TaskTracker
    outbound: aiohttp.ClientSession
    """Subscriber deliveries only (:func:`~webhook_service.core.egress.guarded_session`): every
    connection obeys ``egress``; no proxies, no cookies, raw bodies. Send with ``allow_redirects=False``
    after ``egress.check_request_target(url)`` (IP literals never reach the guarded resolver)."""
    egress: EgressPolicy
    """The policy ``outbound`` enforces (``OUTBOUND_ALLOWED_CIDRS``, ``OUTBOUND_HTTPS_ONLY``)."""
    callbacks: CallbackCache
    """Where the webhook endpoint finds its callback (cached briefly; see the class)."""
    inbox_writer: Batcher[Arrival, Recorded]
    """The one way into the inbox: group commit of concurrent deliveries."""
    signals: Signals
    lease_owner: str
    """This process's lease owner: the prefix of every lease token it stamps on inbox events and
    deliveries (see :mod:`~webhook_service.storage.deliveries`), so a stop gives back all of them."""
    events: tuple[str, ...]
    """The FreshBooks nouns each tenant's callbacks subscribe to (``FRESHBOOKS_EVENTS``)."""
    delivery_capacity: Capacity
    """Deliveries this process may hold at once (``DELIVERY_CONCURRENCY``), shared by its workers
    and the processor's hand-overs: nothing is leased that cannot start now."""

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings, *, migrate_schema: bool | None = None) -> AsyncIterator[Runtime]:
        """Build everything; the secret key is checked first so a keyless start fails before I/O."""
        box = secret_box_from_settings(settings)
        events = subscribed_nouns(settings.freshbooks_events)  # a typo fails here, before any I/O
        egress = EgressPolicy(settings.allowed_cidrs, https_only=settings.outbound_https_only)  # bad CIDR: fail here
        db = Database(settings.database_url)
        http = transport.session(settings)
        tasks = TaskTracker()
        lease_owner = claims.new_owner()
        signals = Signals(lambda: claims.lease_token(lease_owner))
        outbound = guarded_session(egress, limit=settings.delivery_concurrency, timeout=settings.delivery_timeout)
        try:
            if migrate_schema if migrate_schema is not None else settings.should_migrate_on_start:
                await migrate.upgrade(db)
            oauth = OAuthClient(settings, http)
            pace = Pace()  # one tenant's duty requests, API and token endpoint alike, share its turns
            tokens = TokenManager(db, oauth, box, settings, pace=pace)
            yield cls(
                settings=settings,
                db=db,
                box=box,
                http=http,
                oauth=oauth,
                tokens=tokens,
                freshbooks=FreshBooksClient(settings, http, tokens, pace=pace),
                tasks=tasks,
                outbound=outbound,
                egress=egress,
                callbacks=CallbackCache(db),
                inbox_writer=inbox.writer(db, settings, signals.inbox_lane),
                signals=signals,
                lease_owner=lease_owner,
                events=events,
                delivery_capacity=Capacity(settings.delivery_concurrency),
            )
        finally:
            await tasks.cancel_all()
            await tokens.close() if "tokens" in locals() else None  # unbound if the migration failed
            await outbound.close()
            await http.close()
            await db.dispose()
