"""Outgoing POSTs to callback URIs: one FIFO queue, one background thread.

The queue lives behind ``SimulatorState``'s lock (the dispatcher's
``threading.Condition`` is built on that very lock), but the network I/O
happens with the lock released, so a slow or dead receiver never stalls the
API or the test thread. The sender thread runs its own event loop; one sender
task (the default) keeps deliveries in the order the changes happened;
FreshBooks promises no order at all, but a deterministic one keeps tests
reproducible (the field order is what gets shuffled).

No retries: FreshBooks' retry policy is undocumented, so the harsher reading
is that a failed delivery is simply lost and the receiver must poll to cover
the gap.

Locking contract: methods ending in ``_locked`` are called with the shared
lock held (so a state change and its deliveries are queued atomically);
``flush`` and ``close`` acquire it themselves and must be called without it.
The ``prepare`` and ``finish`` hooks the state supplies run with the lock
held, on the sender thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import httpx

from .signing import FORM_CONTENT_TYPE, SIGNATURE_HEADER, encode

DELIVERY_TIMEOUT_SECONDS = 10.0
USER_AGENT = "FreshBooks-Webhooks (simulator)"

log = logging.getLogger(__name__)

Kind = Literal["verify", "event"]


@dataclass(slots=True)
class DeliveryHold:
    """Keeps queued deliveries back until an HTTP response has been sent.

    FreshBooks sends the verification *after* answering the create; a route
    attaches a hold to what it queues and releases it once its response is
    out (or failed), so the POST can never overtake the response.
    """

    released: bool = False


@dataclass(slots=True)
class Delivery:
    """One POST to make. ``uri`` and ``signature`` of an event are filled in by ``prepare``."""

    kind: Kind
    callback_id: int
    message: dict[str, object]
    uri: str = ""
    signature: str | None = None
    dropped: bool = False
    hold: DeliveryHold | None = None
    started: float = field(default=0.0)

    @property
    def body(self) -> bytes:
        return encode(self.message)


@dataclass(slots=True)
class Outcome:
    status: int | None  # None: dropped, or no response at all
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


async def post(client: httpx.AsyncClient, delivery: Delivery) -> Outcome:
    """Send one delivery; any failure to get a response is an error, never an exception."""
    headers = {"Content-Type": FORM_CONTENT_TYPE, "User-Agent": USER_AGENT}
    if delivery.signature is not None:
        headers[SIGNATURE_HEADER] = delivery.signature
    try:
        response = await client.post(delivery.uri, content=delivery.body, headers=headers)
    except Exception as exc:  # transport errors, bad URLs...: the delivery is lost either way
        return Outcome(None, f"{type(exc).__name__}: {exc}")
    return Outcome(response.status_code, None)


Prepare = Callable[[Delivery], Delivery | None]
Finish = Callable[[Delivery, Outcome], None]


class Dispatcher:
    """The queue and its sender thread (started lazily, daemon, restartable after ``close``).

    One sender (the default) keeps strict FIFO order. FreshBooks' own concurrency is undocumented;
    ``senders > 1`` plays a FreshBooks that posts several deliveries at once (order then only holds
    per sender), which load tests need to offer more than one request's worth of traffic at a time.
    The senders are tasks on the thread's own event loop: threads of their own would contend for
    the GIL and the state lock with the simulator's API and slow it down.
    """

    def __init__(self, lock: threading.Lock, prepare: Prepare, finish: Finish, *, senders: int = 1) -> None:
        self._settled = threading.Condition(lock)
        self._prepare = prepare
        self._finish = finish
        self._queue: deque[Delivery] = deque()
        self._in_flight = 0
        self._senders = max(1, senders)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._generation: object | None = None
        self.paused = False

    # -- with the lock held ------------------------------------------------------------

    def submit_locked(self, delivery: Delivery) -> None:
        self._queue.append(delivery)
        if self._generation is None:
            generation = self._generation = object()
            self._thread = threading.Thread(target=self._run, args=(generation,), name="sim-deliveries", daemon=True)
            self._thread.start()
        self._poke()

    def release_locked(self, hold: DeliveryHold) -> None:
        hold.released = True
        self._poke()

    def set_paused_locked(self, paused: bool) -> None:
        self.paused = paused
        self._poke()
        self._settled.notify_all()

    def _poke(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing: its senders are leaving anyway
                loop.call_soon_threadsafe(wake.set)

    # -- without the lock ----------------------------------------------------------------

    def flush(self, timeout: float) -> None:
        """Wait until nothing is queued (paused deliveries excepted) or in flight."""
        with self._settled:
            if not self._settled.wait_for(lambda: self._in_flight == 0 and (self.paused or not self._queue), timeout):
                raise TimeoutError(
                    f"deliveries not drained within {timeout} s "
                    f"({len(self._queue)} queued, {self._in_flight} in flight)"
                )

    def close(self, timeout: float = DELIVERY_TIMEOUT_SECONDS) -> None:
        """Stop the sender thread; queued deliveries are discarded (an in-flight one finishes)."""
        with self._settled:
            thread, self._thread, self._generation = self._thread, None, None
            self._queue.clear()
            self._poke()
            self._loop = self._wake = None
            self._settled.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # -- the sender thread -----------------------------------------------------------------

    def _ready(self, generation: object) -> bool:
        if self._generation is not generation or self.paused or not self._queue:
            return False
        hold = self._queue[0].hold
        return hold is None or hold.released

    def _run(self, generation: object) -> None:
        asyncio.run(self._main(generation))

    async def _main(self, generation: object) -> None:
        wake = asyncio.Event()
        with self._settled:
            if self._generation is not generation:
                return  # closed before it started
            self._loop, self._wake = asyncio.get_running_loop(), wake
        wake.set()  # anything queued before the loop existed
        async with httpx.AsyncClient(timeout=DELIVERY_TIMEOUT_SECONDS, follow_redirects=False) as client:
            await asyncio.gather(*(self._send_loop(client, generation, wake) for _ in range(self._senders)))

    async def _send_loop(self, client: httpx.AsyncClient, generation: object, wake: asyncio.Event) -> None:
        while True:
            wake.clear()  # before looking: a submit after the look sets it again
            with self._settled:
                if self._generation is not generation:
                    return
                delivery = self._queue.popleft() if self._ready(generation) else None
                if delivery is None:
                    prepared = None
                else:
                    self._in_flight += 1
                    try:
                        prepared = self._prepare(delivery)
                    except Exception:  # a bug must not kill the sender and wedge flush()
                        log.exception("preparing a delivery failed")
                        prepared = None
                    if prepared is None:
                        self._in_flight -= 1
                        self._settled.notify_all()
            if delivery is None:
                await wake.wait()
                continue
            if prepared is None:
                continue
            prepared.started = time.monotonic()
            outcome = Outcome(None, None) if prepared.dropped else await post(client, prepared)
            with self._settled:
                self._in_flight -= 1
                try:
                    self._finish(prepared, outcome)
                except Exception:
                    log.exception("recording a delivery failed")
                finally:
                    self._settled.notify_all()
