"""All simulator data behind one lock, and the Python API tests drive it with.

The HTTP server runs on a background thread while the test thread seeds
objects, expires tokens or reads the logs, so every read and write of shared
data happens under ``self._lock`` (a plain ``threading.Lock``: short critical
sections, never nested). The helper stores it composes (tokens, objects,
failures, webhooks) are deliberately lock-free and only ever touched from here.

Webhook deliveries go through a ``Dispatcher`` whose condition variable is
built on this same lock: a change and the deliveries it causes are queued in
one critical section, while the POSTs themselves run on the dispatcher's
thread with the lock released.
"""

from __future__ import annotations

import contextlib
import random
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any

from .callbacks import Callback, check_event, check_uri
from .catalog import ResourceSpec, get_spec
from .clock import normalize, utc_now
from .delivery import DELIVERY_TIMEOUT_SECONDS, Delivery, DeliveryHold, Dispatcher, Outcome
from .factory import FIRST, LAST, ObjectFactory
from .failures import FailurePlan, FailureRule
from .identity import Business, Identity, Membership
from .store import ObjectStore, Record, clone
from .tokens import OAuthError, TokenStore
from .webhooks import Webhooks

BusinessRef = str | int  # an account_id string, or an integer business id

DEFAULT_IDENTITY_ID = 12345
DEFAULT_BUSINESS_UUID = "046cc001-5c5b-4a1e-9d7a-2f1c9e0b4a10"


class SimulatorState:
    """The FreshBooks world: identities, businesses, tokens, objects, logs.

    ``now`` (aware UTC datetimes) stamps objects; tests replace it to create
    objects at chosen moments, or freeze it (``same_second``) to make several
    changes inside one second. OAuth expiry runs on the real wall clock
    (``time.time``) so a frozen ``now`` never makes tokens look stale to a
    service that compares ``created_at + expires_in`` with its own clock.

    Every ``create_object`` / ``update_object`` / ``delete_object`` /
    ``archive_object`` (not ``seed``) sends ``<noun>.create|update|delete``
    to the business's verified callbacks; ``flush_deliveries()`` waits for
    them and ``close()`` stops the delivery thread.
    """

    def __init__(self, seed: int = 0, *, delivery_senders: int = 1) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self.client_id = "sim-client-id"
        self.client_secret = "sim-client-secret"
        self.now: Callable[[], datetime] = utc_now
        self._running_clock: Callable[[], datetime] | None = None  # while frozen: the clock to go back to
        self.requests: list[dict[str, Any]] = []
        self.token_requests: list[dict[str, Any]] = []
        self.deliveries: list[dict[str, Any]] = []
        self._tokens = TokenStore()
        self._token_delay = 0.0
        self._store = ObjectStore(ObjectFactory(self._rng))
        self._failures = FailurePlan()
        # Its own RNG, so webhook traffic never shifts the seeded objects (and vice versa).
        self._webhooks = Webhooks(random.Random(f"deliveries:{seed}"))
        self._dispatcher = Dispatcher(
            self._lock, self._webhooks.prepare, self._finish_delivery, senders=delivery_senders
        )
        self._identities: dict[int, Identity] = {}
        self._businesses: dict[int, Business] = {}
        self._by_account: dict[str, Business] = {}  # account_id -> business: no scan per lookup
        self._next_identity_id = DEFAULT_IDENTITY_ID
        self._next_membership_id = 140130
        self._add_business_locked(Business(439000, "Awesome Inc.", DEFAULT_BUSINESS_UUID, "ABC123", "dd/mm/yyyy"))
        self.default_identity_id = self.add_identity(
            [
                {"business_id": 439000, "account_id": "ABC123", "name": "Awesome Inc.", "role": "owner"},
                {"business_id": 439001, "account_id": "XYZ789", "name": "Second Co.", "role": "business_manager"},
                {"business_id": 439002, "name": "Client Portal Biz", "role": "client"},
            ]
        )

    # -- configuration -----------------------------------------------------------

    @property
    def access_token_ttl(self) -> int:
        """Seconds an access token lives (``expires_in``); FreshBooks: 12 hours."""
        return self._tokens.access_token_ttl

    @access_token_ttl.setter
    def access_token_ttl(self, seconds: int) -> None:
        with self._lock:
            self._tokens.access_token_ttl = int(seconds)

    @property
    def token_delay(self) -> float:
        """Seconds the token endpoint holds back each answer that issues tokens (0: none).

        The grant is decided (and logged) the moment the request arrives; only the answer waits,
        counted from arrival, without blocking the server. Refusals (``invalid_grant``) and injected
        failures answer at once: a rotation is the slow part of a token endpoint, and this is the
        order that hurts a service, whose second refresher learns ``invalid_grant`` while the first
        one's pair is still on the wire. Held answers see a change at once: setting 0 releases them,
        so a test can hold a refresh for as long as it needs and then let it through.
        """
        with self._lock:
            return self._token_delay

    @token_delay.setter
    def token_delay(self, seconds: float) -> None:
        seconds = float(seconds)
        if not 0 <= seconds < float("inf"):
            raise ValueError("token_delay must be a finite number of seconds, 0 or more")
        with self._lock:
            self._token_delay = seconds

    def _stamp(self) -> datetime:
        return normalize(self.now())

    # -- the clock -------------------------------------------------------------------

    def freeze_clock(self, at: datetime | None = None) -> datetime:
        """Stamp every change from now on with one second, ``at`` (default: the current one).

        FreshBooks stamps ``updated`` to the second and real changes come faster (an invoice
        created then sent, a payment marking it paid): this makes two changes of one object share
        a second on purpose. Returns the frozen moment; :meth:`thaw_clock` lets time run again.
        """
        moment = normalize(at if at is not None else self.now())
        with self._lock:
            if self._running_clock is None:
                self._running_clock = self.now
            self.now = lambda: moment
        return moment

    def thaw_clock(self) -> None:
        """Back to the clock that ran before :meth:`freeze_clock` (no-op when not frozen)."""
        with self._lock:
            if self._running_clock is not None:
                self.now, self._running_clock = self._running_clock, None

    @property
    def clock_frozen(self) -> bool:
        return self._running_clock is not None

    @contextlib.contextmanager
    def same_second(self, at: datetime | None = None) -> Iterator[datetime]:
        """Every change inside the block is stamped with one second (see :meth:`freeze_clock`)."""
        moment = self.freeze_clock(at)
        try:
            yield moment
        finally:
            self.thaw_clock()

    # -- identities and businesses -------------------------------------------------

    def add_identity(self, memberships: list[dict[str, Any]]) -> int:
        """Create an identity with these memberships; returns its identity id.

        Each membership: ``{"business_id", "account_id" (optional), "name",
        "role"}``. An unknown business id creates the business; a known one is
        shared (its ``account_id`` must agree if given). Leaving
        ``account_id`` out gives the membership none, as FreshBooks does for
        client-role users.
        """
        with self._lock:
            return self._add_identity_locked(memberships)

    def _add_identity_locked(self, memberships: list[dict[str, Any]]) -> int:
        identity_id = self._next_identity_id
        self._next_identity_id += 1
        first, last = self._rng.choice(FIRST), self._rng.choice(LAST)
        identity = Identity(identity_id, first, last, f"{first.lower()}.{identity_id}@example.com")
        for spec in memberships:
            business = self._business_for_membership(spec)
            membership_id = self._next_membership_id
            while membership_id in self._businesses:  # never equal to a business id
                membership_id += 1
            self._next_membership_id = membership_id + 1
            identity.memberships.append(
                Membership(membership_id, str(spec.get("role", "owner")), business, spec.get("account_id"))
            )
        self._identities[identity_id] = identity
        return identity_id

    def _business_for_membership(self, spec: dict[str, Any]) -> Business:
        business_id = int(spec["business_id"])
        account_id = spec.get("account_id")
        business = self._businesses.get(business_id)
        if business is None:
            if account_id is not None and account_id in self._by_account:
                raise ValueError(f"account_id {account_id!r} already belongs to another business")
            business_uuid = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
            name = str(spec.get("name", f"Business {business_id}"))
            business = self._add_business_locked(Business(business_id, name, business_uuid, account_id))
        elif account_id is not None:
            if business.account_id is None:
                business.account_id = account_id
                self._by_account.setdefault(account_id, business)  # lookups find the first, as before
            elif business.account_id != account_id:
                raise ValueError(f"business {business_id} has account_id {business.account_id!r}")
        return business

    def _add_business_locked(self, business: Business) -> Business:
        self._businesses[business.id] = business
        if business.account_id is not None:
            self._by_account[business.account_id] = business
        return business

    def connect_businesses(self, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Many businesses at once, each as a customer who connected the app long ago: its own
        owner identity, a grant with a live token pair, and verified callbacks (no verification
        POSTs). For load tests with thousands of tenants, where one request per step is too slow.

        Each spec: ``{"business_id", "account_id", "name" (optional), "callbacks": [{"event",
        "uri"}, ...] (optional)}``. Returns, per spec in order, the business and identity ids, the
        token endpoint's answer (``access_token``, ``refresh_token``, ``expires_in``,
        ``created_at``...) and each callback with its ``verifier``. A bad spec raises before its
        own business is made (the ones before it stay).
        """
        now = self._stamp()
        made = []
        for spec in specs:
            business_id, account_id = int(spec["business_id"]), str(spec["account_id"])
            callbacks = [(check_event(c.get("event")), check_uri(c.get("uri"))) for c in spec.get("callbacks", [])]
            with self._lock:
                if business_id in self._businesses or account_id in self._by_account:
                    raise ValueError(f"business {business_id} / account_id {account_id!r} exists already")
                membership = {"business_id": business_id, "account_id": account_id, "role": "owner"}
                if "name" in spec:
                    membership["name"] = str(spec["name"])
                identity_id = self._add_identity_locked([membership])
                business = self._businesses[business_id]
                tokens = self._tokens.grant_pair(self._tokens.new_grant(identity_id))
                added = [
                    self._webhooks.add_verified(business, identity_id, event, uri, now) for event, uri in callbacks
                ]
                rendered = [
                    {**self._webhooks.callbacks.render(callback), "verifier": callback.verifier} for callback in added
                ]
            ids = {"business_id": business_id, "account_id": account_id, "identity_id": identity_id}
            made.append({**ids, **tokens, "callbacks": rendered})
        return made

    def _identity(self, identity_id: int | None) -> Identity:
        identity_id = self.default_identity_id if identity_id is None else identity_id
        try:
            return self._identities[identity_id]
        except KeyError:
            raise KeyError(f"unknown identity {identity_id}") from None

    def _business(self, ref: BusinessRef) -> Business:
        """Python-API lookup: an account_id string or an integer business id."""
        business = self._businesses.get(ref) if isinstance(ref, int) else self._by_account.get(ref)
        if business is None:
            raise KeyError(f"no business {ref!r}")
        return business

    def business_ref(self, text: str) -> BusinessRef:
        """Control-route helper: an account_id if one matches, else a numeric business id."""
        with self._lock:
            if text in self._by_account or not text.isdigit():
                return text
            return int(text)

    # -- OAuth: Python API -----------------------------------------------------------

    def issue_refresh_token(self, identity_id: int | None = None) -> str:
        """A fresh, valid refresh token for a new grant (what ``tenants import`` takes)."""
        with self._lock:
            identity = self._identity(identity_id)
            return self._tokens.mint_refresh_token(self._tokens.new_grant(identity.id))

    def issue_authorization_code(
        self, redirect_uri: str, identity_id: int | None = None, scope: str | None = None
    ) -> str:
        """A single-use code, valid 5 minutes, bound to ``redirect_uri``."""
        with self._lock:
            identity = self._identity(identity_id)
            return self._tokens.mint_code(identity.id, redirect_uri, scope)

    def expire_access_tokens(self, identity_id: int | None = None) -> int:
        """Make current access tokens (all, or one identity's) answer 401; returns how many."""
        with self._lock:
            return self._tokens.expire_access_tokens(identity_id)

    # -- OAuth: used by the HTTP routes ---------------------------------------------

    def check_client(self, client_id: Any, client_secret: Any) -> None:
        if client_id != self.client_id or client_secret != self.client_secret:
            raise OAuthError(
                401,
                "invalid_client",
                "Client authentication failed due to unknown client, "
                "no client authentication included, or unsupported authentication method.",
            )

    def grant_token(self, body: dict[str, Any]) -> dict[str, Any]:
        """The token endpoint's decision for a parsed body; raises ``OAuthError``."""
        with self._lock:
            self.check_client(body.get("client_id"), body.get("client_secret"))
            grant_type = body.get("grant_type")
            if grant_type == "refresh_token":
                return self._tokens.refresh(body.get("refresh_token"))
            if grant_type == "authorization_code":
                return self._tokens.exchange_code(body.get("code"), body.get("redirect_uri"))
            if not grant_type:
                raise OAuthError(400, "invalid_request", "Missing required parameter: grant_type.")
            raise OAuthError(400, "unsupported_grant_type", f"Unsupported grant type: {grant_type}.")

    def revoke_token(self, body: dict[str, Any]) -> None:
        with self._lock:
            self.check_client(body.get("client_id"), body.get("client_secret"))
            token = body.get("token")
            if not token:
                raise OAuthError(400, "invalid_request", "Missing required parameter: token.")
            self._tokens.revoke(str(token))  # unknown tokens are fine (RFC 7009)

    def authorize(self, client_id: str | None, redirect_uri: str, scope: str | None) -> str:
        """Auto-approve for the default identity; returns the code."""
        with self._lock:
            if client_id != self.client_id:
                raise OAuthError(400, "invalid_client", "Unknown client_id.")
            return self._tokens.mint_code(self.default_identity_id, redirect_uri, scope)

    def authenticate(self, access_token: str | None) -> Identity:
        """The identity behind a Bearer token; ``OAuthError`` (401) otherwise."""
        if not access_token:
            raise OAuthError(401, "unauthenticated", "Missing access token.")
        with self._lock:
            return self._identities[self._tokens.identity_for_access_token(access_token)]

    # -- objects: Python API ---------------------------------------------------------

    def seed(self, account_id: BusinessRef, resource: str, count: int) -> list[dict[str, Any]]:
        """Create ``count`` realistic objects (deterministic for a given seed).

        Seeded objects were created and last updated at random moments in the
        60 days before ``now()``. ``account_id`` names the business for every
        resource (an integer business id is accepted too).
        """
        spec = get_spec(resource)
        now = self._stamp()
        with self._lock:
            records = self._store.seed(spec, self._business(account_id), now, count)
            return [clone(r.data) for r in records]

    def create_object(
        self, account_id: BusinessRef, resource: str, fields: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Create one object stamped ``now()``; ``fields`` override the generated ones."""
        spec = get_spec(resource)
        now = self._stamp()
        with self._lock:
            business = self._business(account_id)
            record = self._store.create(spec, business, now, fields)
            self._emit_locked(business, f"{spec.name}.create", record.data["id"])
            return clone(record.data)

    def update_object(
        self, account_id: BusinessRef, resource: str, object_id: int, fields: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Apply ``fields`` and bump the updated timestamp to ``now()``."""
        spec = get_spec(resource)
        now = self._stamp()
        with self._lock:
            business = self._business(account_id)
            record = self._store.update(spec, business, int(object_id), now, fields)
            self._emit_locked(business, f"{spec.name}.update", record.data["id"])
            return clone(record.data)

    def delete_object(self, account_id: BusinessRef, resource: str, object_id: int) -> dict[str, Any]:
        """Accounting: soft delete (``vis_state`` 1, still readable). Projects family: gone (404)."""
        spec = get_spec(resource)
        now = self._stamp()
        with self._lock:
            business = self._business(account_id)
            if spec.family == "projects":
                record = self._store.remove(spec, business, int(object_id))
            else:
                record = self._store.update(spec, business, int(object_id), now, {"vis_state": 1})
            self._emit_locked(business, f"{spec.name}.delete", record.data["id"])
            return clone(record.data)

    def archive_object(self, account_id: BusinessRef, resource: str, object_id: int) -> dict[str, Any]:
        """``vis_state`` 2 (projects and time entries have none: ``active`` becomes false)."""
        spec = get_spec(resource)
        fields = {"active": False} if spec.name in ("project", "time_entry") else {"vis_state": 2}
        now = self._stamp()
        with self._lock:
            business = self._business(account_id)
            record = self._store.update(spec, business, int(object_id), now, fields)
            self._emit_locked(business, f"{spec.name}.update", record.data["id"])  # archiving is an update
            return clone(record.data)

    def get_object(self, account_id: BusinessRef, resource: str, object_id: int) -> dict[str, Any] | None:
        """The stored full object (lines included), or ``None``."""
        spec = get_spec(resource)
        with self._lock:
            record = self._store.get(spec, self._business(account_id), int(object_id))
            return None if record is None else clone(record.data)

    # -- objects: used by the HTTP routes ----------------------------------------------

    def visible_business(self, identity: Identity, spec: ResourceSpec, identifier: str) -> Business | None:
        """The business ``identifier`` names for this identity, or ``None`` (→ 404).

        Accounting URLs take the ``account_id``; the projects family the
        integer business id. Anything else, or a business the identity has no
        membership for, is simply not found.
        """
        if spec.family == "accounting":
            return identity.business_by_account_id(identifier)
        if not identifier.isdigit():
            return None
        return identity.business_by_id(int(identifier))

    def query(self, spec: ResourceSpec, business: Business, **filters: Any) -> list[dict[str, Any]]:
        """Stored dicts in id order; safe to read unlocked (copy-on-write)."""
        with self._lock:
            return [r.data for r in self._store.query(spec, business, **filters)]

    def lookup(self, spec: ResourceSpec, business: Business, object_id: int) -> dict[str, Any] | None:
        with self._lock:
            record: Record | None = self._store.get(spec, business, object_id)
            return None if record is None else record.data

    # -- failures --------------------------------------------------------------------

    def fail_next(
        self, count: int, status: int = 429, retry_after: str | None = "1", paths_prefix: str | None = None
    ) -> None:
        """The next ``count`` API requests (OAuth endpoints only if
        ``paths_prefix`` names them) answer ``status`` with ``Retry-After``."""
        with self._lock:
            self._failures.add(int(count), int(status), None if retry_after is None else str(retry_after), paths_prefix)

    def take_failure(self, path: str) -> FailureRule | None:
        with self._lock:
            return self._failures.take(path)

    # -- logs ------------------------------------------------------------------------

    def log_request(
        self, method: str, path: str, query: list[tuple[str, str]], authorization: str | None, arrived: float
    ) -> dict[str, Any]:
        """Append a request entry now (status filled in when the response starts)."""
        entry = {
            "method": method,
            "path": path,
            "query": query,
            "authorization": authorization,
            "time": arrived,
            "status": None,
        }
        with self._lock:
            self.requests.append(entry)
        return entry

    def set_status(self, entry: dict[str, Any], status: int) -> None:
        with self._lock:
            entry["status"] = status

    def log_token_request(self, body: dict[str, Any], status: int, error: str | None, arrived: float) -> None:
        entry = {
            "grant_type": body.get("grant_type"),
            "refresh_token": body.get("refresh_token"),
            "code": body.get("code"),
            "status": status,
            "error": error,
            "time": arrived,
        }
        with self._lock:
            self.token_requests.append(entry)

    def reset_logs(self) -> None:
        """Empty the request, token-request and delivery logs in place (references held by tests stay valid)."""
        with self._lock:
            self.requests.clear()
            self.token_requests.clear()
            self.deliveries.clear()

    # -- webhooks: delivery knobs ------------------------------------------------------

    @property
    def delivery_drop_rate(self) -> float:
        """Fraction of *event* deliveries silently lost (seeded); verification POSTs never are."""
        return self._webhooks.drop_rate

    @delivery_drop_rate.setter
    def delivery_drop_rate(self, rate: float) -> None:
        rate = float(rate)
        if not 0.0 <= rate <= 1.0:
            raise ValueError("delivery_drop_rate must be between 0 and 1")
        with self._lock:
            self._webhooks.drop_rate = rate

    @property
    def disable_after_failures(self) -> int | None:
        """Consecutive failed event deliveries after which a callback is disabled (``None``: never)."""
        return self._webhooks.disable_after_failures

    @disable_after_failures.setter
    def disable_after_failures(self, count: int | None) -> None:
        if count is not None and int(count) < 1:
            raise ValueError("disable_after_failures must be at least 1, or None")
        with self._lock:
            self._webhooks.disable_after_failures = None if count is None else int(count)

    @property
    def deliveries_paused(self) -> bool:
        return self._dispatcher.paused

    def pause_deliveries(self) -> None:
        """Hold queued and new deliveries (one already in flight still finishes)."""
        with self._lock:
            self._dispatcher.set_paused_locked(True)

    def resume_deliveries(self) -> None:
        with self._lock:
            self._dispatcher.set_paused_locked(False)

    def flush_deliveries(self, timeout: float = DELIVERY_TIMEOUT_SECONDS) -> None:
        """Block until every queued delivery has been sent (or dropped) and logged.

        While paused only in-flight deliveries are waited for. Raises
        ``TimeoutError`` if that takes longer than ``timeout`` seconds.
        """
        self._dispatcher.flush(timeout)

    def close(self) -> None:
        """Stop the delivery thread and discard queued deliveries (restarts on next use)."""
        self._dispatcher.close()

    def delivery_log(self) -> list[dict[str, Any]]:
        """A snapshot of ``deliveries`` taken under the lock."""
        with self._lock:
            return [dict(entry, fields=dict(entry["fields"])) for entry in self.deliveries]

    # -- webhooks: callbacks, Python API ----------------------------------------------------

    def create_callback(
        self,
        account_id: BusinessRef,
        event: str,
        uri: str,
        identity_id: int | None = None,
        *,
        hold: DeliveryHold | None = None,
    ) -> dict[str, Any]:
        """Subscribe ``uri`` to ``event`` (unverified) and queue its verification POST.

        ``identity_id`` (default: the business's owner) becomes the
        verification's ``user_id``. ``hold`` keeps the POST back until
        released (the HTTP route releases it once its response is sent).
        Raises ``CallbackError`` (a ``ValueError``) for an unknown event or a bad URI.
        """
        now = self._stamp()
        with self._lock:
            business = self._business(account_id)
            creator = self._actor_locked(business) if identity_id is None else self._identity(identity_id).id
            callback, deliveries = self._webhooks.create(business, creator, event, uri, now, hold)
            self._submit_locked(deliveries)
            return self._webhooks.callbacks.render(callback)

    def list_callbacks(self, account_id: BusinessRef, event: str | None = None) -> list[dict[str, Any]]:
        """The business's callbacks in id order (only those for exactly ``event`` if given)."""
        with self._lock:
            return self._callbacks_locked(self._business(account_id), event)

    def get_callback(self, callback_id: int) -> dict[str, Any] | None:
        with self._lock:
            callback = self._webhooks.callbacks.get(int(callback_id))
            return None if callback is None else self._webhooks.callbacks.render(callback)

    def callback_verifier(self, callback_id: int) -> str:
        """The current verifier: what a test signs with to play FreshBooks. ``KeyError`` if unknown."""
        with self._lock:
            return self._callback_locked(callback_id, None).verifier

    def verify_callback(self, callback_id: int, verifier: str, business: Business | None = None) -> dict[str, Any]:
        """PUT the verifier back: the callback is verified, or ``CallbackError`` and nothing changes."""
        now = self._stamp()
        with self._lock:
            callback = self._callback_locked(callback_id, business)
            self._webhooks.verify(callback, verifier, now)
            return self._webhooks.callbacks.render(callback)

    def resend_verification(
        self, callback_id: int, business: Business | None = None, *, hold: DeliveryHold | None = None
    ) -> dict[str, Any]:
        """A new verifier and a new verification POST; unverified until it is PUT back."""
        now = self._stamp()
        with self._lock:
            callback = self._callback_locked(callback_id, business)
            self._submit_locked(self._webhooks.resend(callback, self._businesses[callback.business_id], now, hold))
            return self._webhooks.callbacks.render(callback)

    def update_callback(
        self,
        callback_id: int,
        event: str | None = None,
        uri: str | None = None,
        business: Business | None = None,
        *,
        hold: DeliveryHold | None = None,
    ) -> dict[str, Any]:
        """Change the event and/or URI; a new URI means a new verification."""
        now = self._stamp()
        with self._lock:
            callback = self._callback_locked(callback_id, business)
            owner = self._businesses[callback.business_id]
            self._submit_locked(self._webhooks.update(callback, owner, event, uri, now, hold))
            return self._webhooks.callbacks.render(callback)

    def delete_callback(self, callback_id: int, business: Business | None = None) -> None:
        """Gone at once: queued events for it are not sent. ``KeyError`` if unknown."""
        with self._lock:
            callback = self._callback_locked(callback_id, business)
            self._webhooks.callbacks.remove(callback.id)

    def drop_callback(self, callback_id: int) -> None:
        """FreshBooks deleted the callback on its own (the service finds out by listing)."""
        self.delete_callback(callback_id)

    def disable_callback(self, callback_id: int) -> None:
        """FreshBooks disabled the callback: ``verified`` false, no deliveries until re-verified."""
        now = self._stamp()
        with self._lock:
            self._webhooks.disable(self._callback_locked(callback_id, None), now)

    def send_event(
        self, account_id: BusinessRef, name: str, object_id: int | str, fields: Mapping[str, object] | None = None
    ) -> int:
        """Deliver an arbitrary event (e.g. ``invoice.sendByEmail``) to its verified subscribers.

        ``fields`` add to or override the six standard fields. Returns how many
        deliveries were queued (dropped ones included).
        """
        if not isinstance(name, str) or not name:
            raise ValueError("event name must be a non-empty string")
        with self._lock:
            return self._emit_locked(self._business(account_id), name, object_id, fields)

    # -- webhooks: used by the HTTP routes ---------------------------------------------------

    def business_callbacks(self, business: Business, event: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return self._callbacks_locked(business, event)

    def business_callback(self, business: Business, callback_id: int) -> dict[str, Any] | None:
        with self._lock:
            callback = self._webhooks.callbacks.get(callback_id, business.id)
            return None if callback is None else self._webhooks.callbacks.render(callback)

    def release_deliveries(self, hold: DeliveryHold) -> None:
        """Let deliveries queued under ``hold`` go (the response they must follow is out)."""
        with self._lock:
            self._dispatcher.release_locked(hold)

    # -- webhooks: internals (lock held) -------------------------------------------------------

    def _callbacks_locked(self, business: Business, event: str | None) -> list[dict[str, Any]]:
        found = self._webhooks.callbacks.for_business(business.id)
        if event is not None:
            found = [c for c in found if c.event == event]
        return [self._webhooks.callbacks.render(c) for c in found]

    def _callback_locked(self, callback_id: int, business: Business | None) -> Callback:
        callback = self._webhooks.callbacks.get(int(callback_id), None if business is None else business.id)
        if callback is None:
            raise KeyError(f"no callback {callback_id}")
        return callback

    def _actor_locked(self, business: Business) -> int:
        """Who "made" a change done through the Python API: the business's owner if it has one."""
        members = [
            (m.role != "owner", identity.id)
            for identity in self._identities.values()
            for m in identity.memberships
            if m.business is business
        ]
        return min(members)[1] if members else self.default_identity_id

    def _emit_locked(
        self, business: Business, name: str, object_id: int | str, fields: Mapping[str, object] | None = None
    ) -> int:
        if not self._webhooks.callbacks.subscribers(business.id, name):
            return 0  # the common case: no lookups, no RNG draws
        deliveries = self._webhooks.event_deliveries(business, name, object_id, self._actor_locked(business), fields)
        self._submit_locked(deliveries)
        return len(deliveries)

    def _submit_locked(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            self._dispatcher.submit_locked(delivery)

    def _finish_delivery(self, delivery: Delivery, outcome: Outcome) -> None:
        """Dispatcher hook, lock held: log the attempt and count failures."""
        self.deliveries.append(self._webhooks.finish(delivery, outcome, self._stamp()))
