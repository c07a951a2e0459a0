"""Delivery benchmarks: how fast the service forwards events, and how quickly one gets through.

Run from the repository root::

    .venv/bin/python tests/benchmarks/bench_delivery.py [--database-url URL] [--deliveries N]
                                                       [--rate R] [--seconds S]

It prints figures and never asserts: a missed target is printed as MISSED, not hidden.

Part 1 — deliveries per second (target: >= 2,000/s to a local sink)
    A sink runs in its own process (``sink_app.py``: 200, empty body). In this process a
    ``Runtime`` is opened on a fresh database, a tenant row and one subscription to the sink are
    created, and N events with one delivery each are staged through ``emit.stage`` (not timed).
    Then ``W`` delivery workers drain them as the service runs its own (``run_forever``: each
    claims as capacity frees, one task per send, outcomes group-committed); the timed span ends
    when every delivery is terminal (a count read every 20 ms). Several worker counts / batch sizes are tried, each
    on a fresh database. The same-run BASELINE is the same N payloads POSTed straight from one
    plain ``aiohttp.ClientSession`` (the client the service delivers with) to the same sink at the
    same concurrency (no database, no signing): the machine is shared and noisy, so the ratio says
    more than the absolute figure (target: >= 0.8 of the baseline). Both run with the garbage
    collector as ``serve`` sets it (``freeze_heap``: what exists before the timed part is left out
    of collections, the young generation collected at 10,000): at Python's default the
    collections this process's staged events and payloads made cost the service a fifth of its
    rate, which ``serve`` does not pay.

    Then, for the default configuration, where a delivery's time goes: the same staging, but all
    the deliveries leased by one claim (not timed), then sent by the worker's own send (signed,
    the egress check, aiohttp) ``concurrency`` at a time with nothing recorded, and again with
    each outcome recorded through the worker's group commit. Each beside a baseline loop of its
    own: the first ratio is what the send alone leaves of the target, the second what the records
    take, and the full drain's the claims (as capacity frees) and a task per send. On SQLite, last,
    the floor (``floor_deliverer.py``): the same payloads leased, POSTed and recorded durably by
    plain ``sqlite3`` and ``aiohttp`` with none of the service's code, beside a baseline loop of its
    own: what durability alone leaves of the bare loop on this stack.

Part 2 — inbound-to-delivered latency at a steady rate (target: p99 <= 50 ms at 200 events/s)
    Four processes: the FreshBooks simulator, the sink, the service (``webhook-service serve``),
    and this driver. A tenant is connected with ``tenants import``, its invoice callback verified,
    a subscription to the sink created. Invoices are seeded and each is updated exactly once
    (``PUT /_sim/objects/ABC123/invoice/{id}``) on an open-loop schedule (send i at t0 + i/R,
    never waiting for replies): each PUT makes the simulator POST a signed webhook to the
    service, which commits it to its inbox, hydrates the invoice from the simulator, normalizes
    it and delivers it to the sink. The first ``--warmup`` seconds are excluded.

    * inbound -> delivered  = sink arrival time - the service's inbox ``received_at``
      (the service's own latency, hydration included; this is the figure with the target)
    * end to end            = sink arrival time - scheduled PUT send time (adds the simulator's
      single webhook dispatcher thread and the inbound HTTP hop)
    * a per-stage breakdown from the service's database tells where the time goes
    * BASELINE: round trips of direct POSTs to the sink at the same rate.
    * the CPU of each process while driven: on two cores, the driver, the simulator and the sink
      share the machine with the service.

    The driver's requests (the PUTs, the baseline's POSTs) go out through aiohttp, open loop.

    Events that did not reach the sink within 10 s after the last scheduled send are counted
    and printed.

Databases: by default temporary SQLite files. ``--database-url postgresql+asyncpg://USER@HOST/DB``
names a server on which the benchmark creates (and afterwards drops) its own fresh databases, so
the user must be allowed to ``CREATE DATABASE``; DB itself is only used for that.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import floor_deliverer  # a sibling: the script's directory is on sys.path
import httpx
from procstats import RssSampler, cpu_seconds, hwm_mb, rss_verdict  # a sibling: the script's directory is on sys.path
from pydantic import SecretStr
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from webhook_service.cli.service import freeze_heap
from webhook_service.config import Settings
from webhook_service.core.crypto import generate_key
from webhook_service.core.logs import configure_logging
from webhook_service.delivery import subscriptions
from webhook_service.delivery.worker import DeliveryWorker
from webhook_service.freshbooks.catalogue import get_resource
from webhook_service.normalize import emit
from webhook_service.normalize.events import ORIGIN_WEBHOOK, NormalizedEvent, build
from webhook_service.runtime import Runtime
from webhook_service.sandbox.simulator import SimulatorState
from webhook_service.storage import deliveries as delivery_claims
from webhook_service.storage.columns import new_id, utcnow
from webhook_service.storage.database import Database
from webhook_service.storage.models import (
    Delivery,
    DeliveryAttempt,
    DeliveryStatus,
    Event,
    InboxEvent,
    Tenant,
)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: process helpers shared with the multi-process tests
from processes import Child, Children, ProcessDied, free_port, service_command  # noqa: E402

SINK_SCRIPT = HERE / "sink_app.py"
ACCOUNT_ID = "ABC123"
BUSINESS_ID = 439000
THROUGHPUT_TARGET = 2000.0  # deliveries/s
RATIO_TARGET = 0.8  # of a plain aiohttp POST loop at the same concurrency
LATENCY_TARGET_MS = 50.0  # p99, inbound -> delivered
ARRIVAL_GRACE_S = 10.0  # how long after the run an event may still arrive
STAGE_COMMIT_EVERY = 500
DRAIN_DEADLINE_S = 300.0
DRAIN_POLL_S = 0.02
STARTUP_DEADLINE_S = 30.0


# -- small helpers ----------------------------------------------------------------------------
def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (q in [0, 100])."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def describe_ms(values_s: Sequence[float]) -> str:
    ms = sorted(v * 1000 for v in values_s)
    if not ms:
        return "n=0 (nothing measured)"
    return (
        f"n={len(ms):<5} p50={percentile(ms, 50):7.1f}  p90={percentile(ms, 90):7.1f}  "
        f"p99={percentile(ms, 99):7.1f}  max={ms[-1]:7.1f} ms"
    )


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def event_loop_name() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


# -- subprocesses ---------------------------------------------------------------------------
async def wait_for_port(port: int, procs: Children, what: str, deadline_s: float = STARTUP_DEADLINE_S) -> None:
    deadline = time.monotonic() + deadline_s
    while True:
        procs.ensure_alive()
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} took over {deadline_s:g} s to listen on port {port}") from None
            await asyncio.sleep(0.1)


async def wait_for_ok(url: str, procs: Children, what: str, deadline_s: float = STARTUP_DEADLINE_S) -> None:
    deadline = time.monotonic() + deadline_s
    last = "no answer"
    async with httpx.AsyncClient(timeout=2.0) as client:
        while time.monotonic() < deadline:
            procs.ensure_alive()
            try:
                response = await client.get(url)
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}"
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{what} not ready at {url} within {deadline_s:g} s (last: {last})")


def pid_of(procs: Children, name: str) -> int:
    """The process id of the child started as ``name``."""
    return next(child.popen.pid for child in procs.started if child.name == name)


def start_sink(procs: Children, name: str) -> tuple[Child, str]:
    port = free_port()
    proc = procs.start(name, [sys.executable, str(SINK_SCRIPT), "--port", str(port)])
    return proc, f"http://127.0.0.1:{port}"


async def sink_count(client: httpx.AsyncClient, sink_url: str) -> int:
    response = await client.get(f"{sink_url}/count")
    response.raise_for_status()
    return int(response.json()["count"])


async def sink_reset(client: httpx.AsyncClient, sink_url: str) -> None:
    (await client.post(f"{sink_url}/_reset")).raise_for_status()


# -- databases --------------------------------------------------------------------------------
class Databases:
    """Fresh, empty databases: temporary SQLite files, or databases created on a PostgreSQL server."""

    def __init__(self, admin_url: str | None, tmp: Path) -> None:
        self.admin_url = admin_url
        self.tmp = tmp
        self.created: list[str] = []

    @property
    def backend(self) -> str:
        return "postgresql" if self.admin_url else "sqlite"

    async def create(self, label: str) -> str:
        if self.admin_url is None:
            return f"sqlite+aiosqlite:///{self.tmp}/{label}.db"
        name = f"bench_{label}_{secrets.token_hex(4)}"
        await self._admin(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    async def drop_all(self) -> None:
        for name in self.created:
            with contextlib.suppress(Exception):
                await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()

    async def describe(self) -> str:
        if self.admin_url is None:
            return f"SQLite {sqlite3.sqlite_version} (temporary files under {self.tmp}; WAL, synchronous=FULL)"
        engine = create_async_engine(self.admin_url)
        try:
            async with engine.connect() as connection:
                version = (await connection.execute(text("select version()"))).scalar_one()
        finally:
            await engine.dispose()
        shown = make_url(self.admin_url).render_as_string(hide_password=True)
        return f"{str(version).split(' on ')[0]} at {shown} (fresh databases per run)"

    async def _admin(self, statement: str) -> None:
        assert self.admin_url is not None
        engine = create_async_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as connection:
                await connection.execute(text(statement))
        finally:
            await engine.dispose()


# == Part 1: deliveries per second ============================================================
@dataclass(frozen=True)
class DrainConfig:
    workers: int
    batch_size: int
    concurrency: int  # DELIVERY_CONCURRENCY: in-flight POSTs and outbound connections per process

    def label(self, default: DrainConfig) -> str:
        suffix = " (default)" if self == default else ""
        return f"{self.workers}w x batch {self.batch_size}, cap {self.concurrency}{suffix}"


@dataclass
class ThroughputResult:
    config: DrainConfig
    concurrency: int
    deliveries: int
    drain_s: float
    baseline_s: float
    stage_s: float
    statuses: dict[str, int]
    sink_received: int
    baseline_received: int
    payload_bytes: int
    payloads: list[bytes] = field(default_factory=list, repr=False)
    """The bodies sent, for the floor's trial (:mod:`floor_deliverer`)."""

    @property
    def rate(self) -> float:
        return self.deliveries / self.drain_s

    @property
    def baseline_rate(self) -> float:
        return self.deliveries / self.baseline_s


def parse_configs(spec: str, default: DrainConfig) -> list[DrainConfig]:
    """``WxB`` or ``WxBcC`` items: W workers, batch size B, delivery concurrency C (default kept)."""
    configs = [default]
    for part in spec.replace(" ", "").split(","):
        if not part:
            continue
        workers, _, rest = part.partition("x")
        batch, _, cap = rest.partition("c")
        config = DrainConfig(int(workers), int(batch), int(cap) if cap else default.concurrency)
        if config not in configs:
            configs.append(config)
    return configs


def invoice_objects(count: int) -> list[dict[str, Any]]:
    """Realistic invoices (with lines), made by the simulator's own factory, in-process."""
    state = SimulatorState(seed=11)
    try:
        return state.seed(ACCOUNT_ID, "invoice", count)
    finally:
        state.close()


async def create_tenant(runtime: Runtime) -> Tenant:
    """A tenant row written directly: hydration is not part of the throughput figure."""
    now = utcnow()
    tenant = Tenant(
        id=new_id("ten"),
        account_id=ACCOUNT_ID,
        business_id=BUSINESS_ID,
        name="Benchmark Inc.",
        role="owner",
        scopes="",
        status="active",
        access_token_enc=runtime.box.encrypt("bench-access-token"),
        refresh_token_enc=runtime.box.encrypt("bench-refresh-token"),
        access_expires_at=now + timedelta(hours=1),
        token_version=1,
        created_at=now,
        updated_at=now,
    )
    async with runtime.db.sessions() as session:
        session.add(tenant)
        await session.commit()
    return tenant


def build_events(tenant: Tenant, objects: list[dict[str, Any]]) -> list[NormalizedEvent]:
    resource = get_resource("invoice")
    now = utcnow()
    return [
        build(
            tenant=tenant,
            resource=resource,
            freshbooks_event={"name": "invoice.update", "object_id": str(obj["id"]), "account_id": ACCOUNT_ID},
            obj=obj,
            origin=ORIGIN_WEBHOOK,
            fallback_time=now,
        )
        for obj in objects
    ]


async def stage_events(runtime: Runtime, tenant: Tenant, events: list[NormalizedEvent]) -> None:
    """Stage events (ledger row, event, one delivery each) in commits of ``STAGE_COMMIT_EVERY``."""
    for start in range(0, len(events), STAGE_COMMIT_EVERY):
        async with runtime.db.sessions() as session:
            for event in events[start : start + STAGE_COMMIT_EVERY]:
                if not await emit.stage(session, event, tenant_id=tenant.id, inbox_event_id=None, now=utcnow()):
                    raise RuntimeError(f"event {event.id} was not staged (version already known)")
            await session.commit()


async def outstanding_deliveries(runtime: Runtime) -> int:
    async with runtime.db.sessions() as session:
        result = await session.execute(
            select(func.count())
            .select_from(Delivery)
            .where(Delivery.status.in_((DeliveryStatus.PENDING.value, DeliveryStatus.FAILED.value)))
        )
        return int(result.scalar_one())


async def delivery_statuses(runtime: Runtime) -> dict[str, int]:
    async with runtime.db.sessions() as session:
        rows = await session.execute(select(Delivery.status, func.count()).group_by(Delivery.status))
        return {str(status): int(count) for status, count in rows.all()}


async def drain(runtime: Runtime, loops: int) -> None:
    """The process's delivery worker running as the service runs it (``run_forever`` with
    ``loops`` claim loops: claims as capacity frees, one task per send, outcomes group-committed)
    until no delivery is pending or failed; this loop only looks at the count every ``DRAIN_POLL_S``."""
    sender = DeliveryWorker(runtime)
    task = asyncio.create_task(sender.run_forever(loops=loops))
    try:
        async with asyncio.timeout(DRAIN_DEADLINE_S):
            while await outstanding_deliveries(runtime):
                await asyncio.sleep(DRAIN_POLL_S)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sender.idle()


PARTS = {
    "send": "sends only, after one claim of all (nothing recorded)",
    "record": "sends and their records, after one claim of all",
}
"""The decomposition's partial drains (see the module docstring), by the name ``throughput_trial`` takes."""


async def partial_drain(runtime: Runtime, concurrency: int, *, record: bool) -> float:
    """Every staged delivery leased by one claim (not timed), then sent by the worker's own send,
    ``concurrency`` at a time; with ``record``, each outcome recorded through the worker's group
    commit, as the service records it. Returns the seconds the sends (and records) took.

    The worker's private steps, on purpose: this takes the claims and the task per send out of
    the drain to see what the rest costs, which no public entry point does."""
    worker = DeliveryWorker(runtime)
    now = utcnow()
    async with runtime.db.sessions() as session:
        leased = await delivery_claims.claim_deliveries(
            session, owner=runtime.lease_owner, now=now, limit=1_000_000, lease=worker._lease
        )
    pending = iter(leased)

    async def lane() -> None:
        for delivery, event, subscription in pending:
            outcome = await worker._attempt(delivery, event, subscription, now)
            if outcome is None:
                raise RuntimeError("a delivery's lease ran out before it was sent")
            if record:
                await worker._recorder.submit((outcome, delivery))

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    await worker.idle()
    return time.perf_counter() - started


async def floor_trial(tmp: Path, sink_url: str, payloads: list[bytes], concurrency: int) -> tuple[float, float, int]:
    """The floor (:mod:`floor_deliverer`) on a fresh SQLite file beside a baseline loop of its own:
    its seconds, the baseline's, and the attempts it recorded."""
    baseline_s = await direct_posts(f"{sink_url}/baseline", payloads, concurrency)
    store = floor_deliverer.FloorStore(str(tmp / f"floor-{secrets.token_hex(4)}.db"), payloads)
    try:
        floor_s = await floor_deliverer.drain(store, f"{sink_url}/hook", concurrency, len(payloads))
        return floor_s, baseline_s, store.attempts()
    finally:
        store.close()


def numbered(document: dict) -> dict:
    """The body the service sends for a staged event (its first, so ``sequence`` 1)."""
    return {**document, "data": {**document["data"], "sequence": 1}}


async def direct_posts(url: str, payloads: list[bytes], concurrency: int) -> float:
    """The baseline: POST every payload from one plain aiohttp session (the client library the
    service's deliveries use), ``concurrency`` in flight, nothing stored. Returns seconds."""
    pending = iter(payloads)
    failures = 0
    headers = {"content-type": "application/json"}

    async def lane(session: aiohttp.ClientSession) -> None:
        nonlocal failures
        for payload in pending:
            async with session.post(url, data=payload, headers=headers) as response:
                await response.read()
                failures += response.status != 200

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30.0)) as session:
        started = time.perf_counter()
        await asyncio.gather(*(lane(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    if failures:
        print(f"    warning: {failures} baseline POSTs did not get 200")
    return elapsed


async def throughput_trial(
    databases: Databases,
    sink_url: str,
    objects: list[dict[str, Any]],
    config: DrainConfig,
    index: int,
    procs: Children,
    part: str | None = None,
) -> ThroughputResult:
    """One trial on a fresh database: the baseline loop, then the drain (``part``: one of
    :data:`PARTS` instead, the default configuration's decomposition)."""
    settings = Settings(  # type: ignore[call-arg]
        database_url=await databases.create(f"throughput{index}{part or ''}"),
        secret_key=SecretStr(generate_key()),
        outbound_allowed_cidrs="127.0.0.0/8",
        delivery_workers=config.workers,
        delivery_batch_size=config.batch_size,
        delivery_concurrency=config.concurrency,
        log_level="warning",
        _env_file=None,
    )
    concurrency = min(config.workers * config.batch_size, settings.delivery_concurrency)
    async with Runtime.open(settings, migrate_schema=True) as runtime, httpx.AsyncClient(timeout=10) as control:
        tenant = await create_tenant(runtime)
        await subscriptions.create(runtime, {"url": f"{sink_url}/hook", "description": "benchmark sink"})
        events = build_events(tenant, objects)
        started = time.perf_counter()
        await stage_events(runtime, tenant, events)
        stage_s = time.perf_counter() - started

        await sink_reset(control, sink_url)
        payloads = [json.dumps(numbered(event.document)).encode() for event in events]
        freeze_heap()  # the garbage collector as `serve` sets it, for the service and the baseline alike
        baseline_s = await direct_posts(f"{sink_url}/baseline", payloads, concurrency)
        baseline_received = await sink_count(control, sink_url)
        await sink_reset(control, sink_url)
        procs.ensure_alive()

        if part is None:
            started = time.perf_counter()
            await drain(runtime, config.workers)
            drain_s = time.perf_counter() - started
        else:
            drain_s = await partial_drain(runtime, concurrency, record=part == "record")
        sink_received = await sink_count(control, sink_url)
        statuses = await delivery_statuses(runtime)
        procs.ensure_alive()
    return ThroughputResult(
        config,
        concurrency,
        len(events),
        drain_s,
        baseline_s,
        stage_s,
        statuses,
        sink_received,
        baseline_received,
        payload_bytes=round(sum(map(len, payloads)) / len(payloads)),
        payloads=payloads,
    )


def print_throughput(result: ThroughputResult, default: DrainConfig) -> None:
    print(
        f"  {result.config.label(default):<33} in flight {result.concurrency:>3}: "
        f"service {result.rate:7.0f}/s ({result.drain_s:5.2f} s)   "
        f"baseline {result.baseline_rate:7.0f}/s ({result.baseline_s:5.2f} s)   "
        f"ratio {result.rate / result.baseline_rate:4.2f}"
    )
    succeeded = result.statuses.get(DeliveryStatus.SUCCEEDED.value, 0)
    problems = []
    if succeeded != result.deliveries:
        problems.append(f"only {succeeded} of {result.deliveries} succeeded: {result.statuses}")
    if result.sink_received != result.deliveries:
        problems.append(f"sink received {result.sink_received} deliveries (expected {result.deliveries})")
    if result.baseline_received != result.deliveries:
        problems.append(f"sink received {result.baseline_received} baseline POSTs (expected {result.deliveries})")
    for problem in problems:
        print(f"      ! {problem}")


def print_part(label: str, who: str, rate: float, baseline_rate: float, note: str = "") -> None:
    """One line of where a delivery's time goes: a drain beside its own baseline loop."""
    print(
        f"     {label:<56} {who:<7} {rate:7.0f}/s   baseline {baseline_rate:7.0f}/s   "
        f"ratio {rate / baseline_rate:4.2f}{note}"
    )


async def run_throughput(args: argparse.Namespace, databases: Databases, procs: Children) -> None:
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    default = DrainConfig(defaults.delivery_workers, defaults.delivery_batch_size, defaults.delivery_concurrency)
    configs = parse_configs(args.worker_configs, default)
    print(f"\n== 1. Deliveries per second ({args.deliveries} per trial; target >= {THROUGHPUT_TARGET:,.0f}/s)")
    print(
        "   each trial: W delivery loops x batch size, cap = DELIVERY_CONCURRENCY (in-flight POSTs and outbound "
        f"connections); baseline concurrency = min(W x batch, cap); event loop: {event_loop_name()}"
    )
    sink, sink_url = start_sink(procs, "sink-throughput")
    await wait_for_port(int(sink_url.rsplit(":", 1)[1]), procs, "sink")
    objects = invoice_objects(args.deliveries)
    results = []
    for index, config in enumerate(configs):
        result = await throughput_trial(databases, sink_url, objects, config, index, procs)
        if index == 0:
            print(
                f"   payload: normalized invoice.updated events, {result.payload_bytes} bytes on average; "
                f"staging {result.deliveries} of them took {result.stage_s:.2f} s (not timed)"
            )
        print_throughput(result, default)
        results.append(result)
    print("   where a delivery's time goes (the default config; each its own staging and baseline loop):")
    for part, label in PARTS.items():
        result = await throughput_trial(databases, sink_url, objects, configs[0], 0, procs, part)
        received = "" if result.sink_received == result.deliveries else f"  ! sink received {result.sink_received}"
        print_part(label, "service", result.rate, result.baseline_rate, received)
    first = results[0]
    print_part("as the service drains (claims, a task per send): above", "service", first.rate, first.baseline_rate)
    if databases.backend == "sqlite":
        floor_s, baseline_s, attempts = await floor_trial(databases.tmp, sink_url, first.payloads, first.concurrency)
        recorded = "" if attempts == len(first.payloads) else f"  ! {attempts} attempts recorded"
        count = len(first.payloads)
        label = "the floor: lease, POST, record; sqlite3, no service code"
        print_part(label, "floor", count / floor_s, count / baseline_s, recorded)
    best = max(results, key=lambda r: r.rate)
    ratio = results[0].rate / results[0].baseline_rate
    print(
        f"   target >= {RATIO_TARGET:g}x a plain aiohttp POST loop: default config {ratio:.2f}x -> "
        f"{verdict(ratio >= RATIO_TARGET)}"
    )
    print(
        f"   target >= {THROUGHPUT_TARGET:,.0f}/s: default config {results[0].rate:,.0f}/s -> "
        f"{verdict(results[0].rate >= THROUGHPUT_TARGET)}; best ({best.config.label(default)}) "
        f"{best.rate:,.0f}/s -> {verdict(best.rate >= THROUGHPUT_TARGET)}"
    )
    sink.stop()


# == Part 2: inbound-to-delivered latency =====================================================
@dataclass
class Stack:
    """The three processes of the latency run and what the driver needs to reach them."""

    simulator_url: str
    sink_url: str
    service_url: str
    database_url: str
    env: dict[str, str]
    procs: Children
    command: Sequence[str] = ()
    """The build whose CLI manages this stack's database (empty: this one)."""


@dataclass
class Sent:
    object_id: int
    scheduled: float  # wall clock (time.time()) the open-loop schedule assigned
    started: float = math.nan  # wall clock the request actually started
    status: int | None = None
    error: str | None = None


@dataclass
class EventRow:
    event_id: str
    object_id: str
    received_at: float
    hydrated_at: float
    claimed_at: float | None


@dataclass
class LatencyData:
    sent: list[Sent]
    warmup_count: int
    arrivals: dict[str, float]  # webhook-id -> first arrival
    duplicate_arrivals: int
    rows: dict[str, EventRow]  # object id -> event
    inbox_statuses: dict[str, int]
    simulator_failures: list[dict[str, Any]] = field(default_factory=list)
    deadline: float = 0.0


def service_env(database_url: str, simulator_url: str, service_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "FRESHBOOKS_", "DELIVERY_"))}
    env.update(
        DATABASE_URL=database_url,
        SECRET_KEY=generate_key(),
        FRESHBOOKS_API_BASE=simulator_url,
        FRESHBOOKS_AUTH_BASE=simulator_url,
        FRESHBOOKS_CLIENT_ID="sim-client-id",
        FRESHBOOKS_CLIENT_SECRET="sim-client-secret",
        PUBLIC_BASE_URL=f"http://127.0.0.1:{service_port}",
        OUTBOUND_ALLOWED_CIDRS="127.0.0.0/8",
        FRESHBOOKS_EVENTS="invoice",
        # The default, as an operator runs it: a line per webhook received, per request answered
        # and per event emitted, JSON, to the child's log file. At "warning" the figures left out
        # what every deployment pays (two lines a webhook cost 90 µs of CPU until the twelfth pass).
        LOG_LEVEL="info",
    )
    return env


async def run_cli(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 60.0, *, command: Sequence[str] = ()
) -> str:
    """``webhook-service ARGS`` of this build, or of ``command`` (another build's, whose database it is)."""
    process = await asyncio.create_subprocess_exec(
        *(command or service_command()), *args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise TimeoutError(f"webhook-service {' '.join(args[:2])} took over {timeout:g} s") from None
    if process.returncode != 0:
        tail = "\n".join(stderr.decode(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"webhook-service {' '.join(args[:2])} exited {process.returncode}:\n{tail}")
    return stdout.decode()


@contextlib.asynccontextmanager
async def pipeline_stack(
    databases: Databases,
    procs: Children,
    name: str,
    *,
    settings: Mapping[str, str] | None = None,
    simulator_args: Sequence[str] = (),
    serve_args: Sequence[str] = (),
) -> AsyncIterator[Stack]:
    """Simulator, sink and service on a database of their own (``name``), migrated and ready;
    ``settings``: environment variables for the service beyond :func:`service_env`'s."""
    sim_port, service_port = free_port(), free_port()
    simulator_url, service_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{service_port}"
    database_url = await databases.create(name)
    env = service_env(database_url, simulator_url, service_port)
    env.update(settings or {})
    await run_cli(["migrate"], env, procs.log_dir)
    procs.start(
        "simulator",
        [*service_command(), "simulator", "--port", str(sim_port), "--seed-invoices", "0", *simulator_args],
    )
    _, sink_url = start_sink(procs, f"sink-{name}")
    procs.start("service", [*service_command(), "serve", "--port", str(service_port), *serve_args], env=env)
    await wait_for_port(sim_port, procs, "simulator")
    await wait_for_port(int(sink_url.rsplit(":", 1)[1]), procs, "sink")
    await wait_for_ok(f"{service_url}/readyz", procs, "service")
    yield Stack(simulator_url, sink_url, service_url, database_url, env, procs)


def latency_stack(
    databases: Databases, procs: Children, serve_args: Sequence[str] = ()
) -> contextlib.AbstractAsyncContextManager[Stack]:
    return pipeline_stack(
        databases, procs, "latency", simulator_args=("--delivery-senders", "8"), serve_args=serve_args
    )


async def connect_tenant(stack: Stack, client: httpx.AsyncClient) -> str:
    """``tenants import``, then wait for the invoice callback to be verified; returns the tenant id."""
    token = (await client.post(f"{stack.simulator_url}/_sim/refresh-tokens")).json()["refresh_token"]
    imported = json.loads(
        await run_cli(
            ["tenants", "import", "--refresh-token", token, "--business-id", str(BUSINESS_ID), "--json"],
            stack.env,
            stack.procs.log_dir,
            command=stack.command,
        )
    )
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    while time.monotonic() < deadline:
        stack.procs.ensure_alive()
        listed = await run_cli(["callbacks", "list", "--json"], stack.env, stack.procs.log_dir, command=stack.command)
        callbacks = json.loads(listed)
        if any(c["event"] == "invoice" and c["active"] and c["state"] == "verified" for c in callbacks):
            return str(imported["id"])
        await asyncio.sleep(0.3)
    raise TimeoutError(f"the invoice callback was not verified within {STARTUP_DEADLINE_S:g} s: {callbacks}")


async def subscribe_sink(stack: Stack) -> None:
    await run_cli(
        ["subscriptions", "create", "--url", f"{stack.sink_url}/hook", "--json"],
        stack.env,
        stack.procs.log_dir,
        command=stack.command,
    )


async def seed_invoices(client: httpx.AsyncClient, simulator_url: str, count: int) -> list[int]:
    response = await client.post(
        f"{simulator_url}/_sim/seed", json={"account_id": ACCOUNT_ID, "resource": "invoice", "count": count}
    )
    response.raise_for_status()
    return [int(i) for i in response.json()["ids"]]


async def open_loop(count: int, rate: float, send: Any) -> list[Any]:
    """Start ``send(i, scheduled_wall_time)`` at t0 + i/rate, never waiting for earlier ones."""
    loop = asyncio.get_running_loop()
    mono0 = loop.time() + 0.05
    wall0 = time.time() + (mono0 - loop.time())
    tasks = []
    for i in range(count):
        delay = mono0 + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(i, wall0 + i / rate)))
    return list(await asyncio.gather(*tasks))


def driver_session() -> aiohttp.ClientSession:
    """The open-loop driver's client: aiohttp, as the service delivers with. httpx cost this process
    some 60% of a core at 200 requests/s with hundreds in flight, on a machine of two cores that
    the simulator, the sink and the service share."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=500), timeout=aiohttp.ClientTimeout(total=30.0), trust_env=False
    )


async def sink_baseline(sink_url: str, rate: float, seconds: float, payload_size: int) -> list[float]:
    """Round trips of direct POSTs to the sink on the same open-loop schedule; returns seconds."""
    payload = json.dumps({"padding": "x" * max(0, payload_size - 14)}).encode()

    async with driver_session() as session:

        async def send(i: int, scheduled: float) -> float:
            async with session.post(
                f"{sink_url}/baseline", data=payload, headers={"content-type": "application/json"}
            ) as response:
                await response.read()
                response.raise_for_status()
            return time.time() - scheduled

        return await open_loop(int(rate * seconds), rate, send)


async def drive_updates(simulator_url: str, ids: list[int], rate: float) -> list[Sent]:
    async with driver_session() as session:

        async def send(i: int, scheduled: float) -> Sent:
            sent = Sent(ids[i], scheduled, started=time.time())
            try:
                async with session.put(
                    f"{simulator_url}/_sim/objects/{ACCOUNT_ID}/invoice/{ids[i]}", json={"notes": f"benchmark {i}"}
                ) as response:
                    await response.read()
                    sent.status = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                sent.error = f"{type(exc).__name__}: {exc}"
            return sent

        return await open_loop(len(ids), rate, send)


async def wait_for_arrivals(client: httpx.AsyncClient, sink_url: str, expected: int, deadline: float) -> None:
    while time.time() < deadline:
        if await sink_count(client, sink_url) >= expected:
            return
        await asyncio.sleep(0.1)


async def read_service_database(database_url: str) -> tuple[dict[str, EventRow], dict[str, int]]:
    """Per event: inbox ``received_at``, hydration time (``events.created_at``), first claim time."""
    db = Database(database_url)
    try:
        async with db.sessions() as session:
            rows = await session.execute(
                select(Event.id, Event.object_id, InboxEvent.received_at, Event.created_at).join(
                    InboxEvent, InboxEvent.id == Event.inbox_event_id
                )
            )
            events = [(str(a), str(b), c, d) for a, b, c, d in rows.all()]
            claims = await session.execute(
                select(Delivery.event_id, func.min(DeliveryAttempt.started_at))
                .join(DeliveryAttempt, DeliveryAttempt.delivery_id == Delivery.id)
                .group_by(Delivery.event_id)
            )
            first_claim: dict[str, datetime] = {str(e): s for e, s in claims.all()}
            statuses = await session.execute(select(InboxEvent.status, func.count()).group_by(InboxEvent.status))
            inbox_statuses = {str(s): int(n) for s, n in statuses.all()}
    finally:
        await db.dispose()
    by_object: dict[str, EventRow] = {}
    for event_id, object_id, received_at, created_at in events:
        claimed = first_claim.get(event_id)
        claimed_at = claimed.timestamp() if claimed else None
        by_object[object_id] = EventRow(
            event_id, object_id, received_at.timestamp(), created_at.timestamp(), claimed_at
        )
    return by_object, inbox_statuses


async def simulator_failures(client: httpx.AsyncClient, simulator_url: str) -> list[dict[str, Any]]:
    log = (await client.get(f"{simulator_url}/_sim/deliveries")).json()
    return [
        entry
        for entry in log
        if entry["kind"] == "event" and not (entry["status"] is not None and 200 <= entry["status"] < 300)
    ]


async def collect(stack: Stack, client: httpx.AsyncClient, sent: list[Sent], warmup_count: int) -> LatencyData:
    deadline = max(s.scheduled for s in sent) + ARRIVAL_GRACE_S
    await wait_for_arrivals(client, stack.sink_url, len(sent), deadline)
    stats = (await client.get(f"{stack.sink_url}/stats")).json()
    arrivals: dict[str, float] = {}
    duplicates = 0
    for at, webhook_id in stats["arrivals"]:
        if at > deadline:
            continue
        if webhook_id in arrivals:
            duplicates += 1
        else:
            arrivals[webhook_id] = at
    stack.procs.ensure_alive()
    rows, inbox_statuses = await read_service_database(stack.database_url)
    failures = await simulator_failures(client, stack.simulator_url)
    return LatencyData(sent, warmup_count, arrivals, duplicates, rows, inbox_statuses, failures, deadline)


def print_latency(data: LatencyData, rate: float, baseline: list[float]) -> None:
    measured = data.sent[data.warmup_count :]
    ok_sends = [s for s in measured if s.status == 200]
    span = measured[-1].started - measured[0].started if len(measured) > 1 else math.nan
    achieved = (len(measured) - 1) / span if span and span > 0 else math.nan
    service, end_to_end, sim_hop, hydrate, pickup, send_hop = [], [], [], [], [], []
    missing = 0
    for s in measured:
        row = data.rows.get(str(s.object_id))
        arrived = data.arrivals.get(row.event_id) if row else None
        if row is None or arrived is None:
            missing += 1
            continue
        service.append(arrived - row.received_at)
        end_to_end.append(arrived - s.scheduled)
        sim_hop.append(row.received_at - s.scheduled)
        hydrate.append(row.hydrated_at - row.received_at)
        if row.claimed_at is not None:
            pickup.append(row.claimed_at - row.hydrated_at)
            send_hop.append(arrived - row.claimed_at)
    lag = [s.started - s.scheduled for s in measured]
    print(
        f"   driven: {len(measured)} PUTs measured (+{data.warmup_count} warm-up excluded), achieved "
        f"{achieved:.1f}/s (target {rate:g}/s), {len(ok_sends)} answered 200, driver lag p99 "
        f"{percentile(sorted(lag), 99) * 1000:.1f} ms"
    )
    print(f"   inbound -> delivered (sink arrival - inbox received_at):  {describe_ms(service)}")
    p99 = percentile(sorted(service), 99) * 1000
    print(
        f"   did not arrive within {ARRIVAL_GRACE_S:g} s after the run:   {missing} of {len(measured)}"
        f"   -> target p99 <= {LATENCY_TARGET_MS:g} ms: {verdict(p99 <= LATENCY_TARGET_MS and missing == 0)}"
    )
    if missing:
        print("     (percentiles cover only the events that arrived; the missing ones took longer than all of them)")
    received = sorted(row.received_at for row in data.rows.values() if row.received_at <= data.deadline)
    if len(received) > 1:
        print(
            f"   service inbox accepted {len(received)} of {len(data.sent)} webhooks by then "
            f"({(len(received) - 1) / (received[-1] - received[0]):.0f}/s while receiving)"
        )
    print(f"   end to end (scheduled PUT send -> sink arrival):          {describe_ms(end_to_end)}")
    print("   where the time goes (per event, from the service's database; clocks are the same host's):")
    print(f"     PUT scheduled -> inbox received_at (simulator dispatch): {describe_ms(sim_hop)}")
    print(f"     received_at -> hydrated (inbox claim + GET invoice):     {describe_ms(hydrate)}")
    print(f"     hydrated -> worker claim starts (commit + wake-up):     {describe_ms(pickup)}")
    print(f"     claim starts -> sink arrival (claim, sign, POST):       {describe_ms(send_hop)}")
    print(f"   BASELINE sink round trip, direct POSTs at {rate:g}/s:        {describe_ms(baseline)}")
    if service and baseline:
        direct = percentile(sorted(baseline), 99) * 1000
        print(
            f"   inbound-to-delivered p99 / direct round trip p99: {p99:.1f} ms / {direct:.1f} ms = "
            f"{p99 / direct:.0f}x; load average {os.getloadavg()[0]:.2f}"
        )
    problems = [s for s in measured if s.status != 200]
    if problems:
        print(f"   ! {len(problems)} PUTs failed, e.g. {problems[0].status or problems[0].error}")
    if data.simulator_failures:
        example = data.simulator_failures[0]
        print(
            f"   ! the simulator failed {len(data.simulator_failures)} webhook POSTs to the service, "
            f"e.g. status={example['status']} error={example['error']}"
        )
    if data.duplicate_arrivals:
        print(f"   ! {data.duplicate_arrivals} duplicate arrivals at the sink")
    print(f"   service inbox statuses at the end: {data.inbox_statuses}")


async def run_latency(args: argparse.Namespace, databases: Databases, procs: Children) -> None:
    warmup_count = int(args.rate * args.warmup)
    measured_count = int(args.rate * args.seconds)
    print(
        f"\n== 2. Inbound-to-delivered latency at a steady {args.rate:g} events/s for {args.seconds:g} s "
        f"(+{args.warmup:g} s warm-up; target p99 <= {LATENCY_TARGET_MS:g} ms)"
    )
    if args.serve_args:
        print(f"   the service runs as `serve {' '.join(args.serve_args)}`")
    async with (
        latency_stack(databases, procs, args.serve_args) as stack,
        httpx.AsyncClient(timeout=30.0) as client,
    ):
        tenant_id = await connect_tenant(stack, client)
        await subscribe_sink(stack)
        ids = await seed_invoices(client, stack.simulator_url, warmup_count + measured_count)
        print(f"   tenant {tenant_id} connected, invoice callback verified, {len(ids)} invoices seeded")
        baseline = await sink_baseline(stack.sink_url, args.rate, min(args.seconds, 5.0), payload_size=2000)
        await sink_reset(client, stack.sink_url)
        service_pid = pid_of(procs, "service")
        pids = {name: pid_of(procs, name) for name in ("service", "simulator", "sink-latency")}
        cpu_before, driver_before, started = _cpu_of(pids), time.process_time(), time.perf_counter()
        with RssSampler(service_pid) as sampler, sampler.phase("run"):
            sent = await drive_updates(stack.simulator_url, ids, args.rate)
            data = await collect(stack, client, sent, warmup_count)
        cpu = {name: seconds - cpu_before[name] for name, seconds in _cpu_of(pids).items()}
        cpu["driver"] = time.process_time() - driver_before
        wall = time.perf_counter() - started
        lifetime_peak = hwm_mb(service_pid)
    print_latency(data, args.rate, baseline)
    # A process near a whole core queues its own work: the latency above is then mostly waiting.
    print(
        "   CPU while driven and collected ("
        + f"{wall:.1f} s; all {len(ids)} events): "
        + ", ".join(f"{name} {seconds:.1f} s ({seconds / wall:.0%} of a core)" for name, seconds in cpu.items())
        + f"; the service {cpu['service'] / len(ids) * 1000:.2f} ms an event"
    )
    print(
        f"   service process RSS: peak while driven {sampler.peaks.get('run', math.nan):.0f} MB (sampled every "
        f"{sampler.interval * 1000:.0f} ms); over its life (VmHWM) {rss_verdict(lifetime_peak)}"
    )


def _cpu_of(pids: Mapping[str, int]) -> dict[str, float]:
    return {name: cpu_seconds(pid) or math.nan for name, pid in pids.items()}


# == main =====================================================================================
def print_machine(databases_description: str) -> None:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print("== Machine")
    print(f"   CPUs: {os.cpu_count()} (usable by this process: {affinity}); load average: {load}")
    print(f"   Python {platform.python_version()} ({platform.python_implementation()}), {platform.platform()}")
    print(f"   database: {databases_description}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Delivery throughput and latency benchmarks (prints figures).")
    add_database_argument(parser)
    parser.add_argument("--deliveries", type=int, default=5000, help="deliveries per throughput trial (5000)")
    parser.add_argument(
        "--worker-configs",
        default="1x50,8x50,4x200,4x50c8",
        help="WxB[cC],... (claim loops x batch size [c delivery concurrency]) tried after the defaults",
    )
    parser.add_argument("--rate", type=float, default=200.0, help="events per second in the latency run (200)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds of the latency run (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds, excluded (2)")
    parser.add_argument("--only", choices=("throughput", "latency"), help="run one part only")
    parser.add_argument(
        "--serve-args", default="", help="extra `serve` arguments for the latency run, e.g. '--workers 2'"
    )
    args = parser.parse_args(argv)
    args.serve_args = args.serve_args.split()
    return checked_database_argument(parser, args)


def add_database_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        help="postgresql+asyncpg://USER@HOST:PORT/DB: fresh databases are created on that server and "
        "dropped afterwards (default: temporary SQLite files)",
    )


def checked_database_argument(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    if args.database_url and not args.database_url.startswith("postgresql"):
        parser.error("--database-url takes a postgresql+asyncpg:// URL; omit it for SQLite (the default)")
    return args


Body = Callable[[argparse.Namespace, Databases, Children], Awaitable[None]]


def run_benchmark(args: argparse.Namespace, prefix: str, body: Body) -> int:
    """Every benchmark's frame: a temporary directory, its databases and child processes (always
    cleaned up), the machine printed first; an exit code, with a one-line reason when it aborts."""

    async def framed() -> None:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            databases = Databases(args.database_url, Path(tmp))
            procs = Children(Path(tmp))
            try:
                print_machine(await databases.describe())
                await body(args, databases, procs)
            finally:
                procs.stop_all()
                await databases.drop_all()

    configure_logging("warning", "console")  # an in-process Runtime's info lines would interleave
    try:
        with _runner() as runner:
            runner.run(framed())
    except (ProcessDied, TimeoutError, RuntimeError) as exc:
        print(f"\nbenchmark aborted: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


async def both_parts(args: argparse.Namespace, databases: Databases, procs: Children) -> None:
    if args.only in (None, "throughput"):
        await run_throughput(args, databases, procs)
    procs.stop_all()
    if args.only in (None, "latency"):
        await run_latency(args, databases, procs)


def main(argv: Sequence[str] | None = None) -> int:
    return run_benchmark(parse_args(argv), "bench-delivery-", both_parts)


@contextlib.contextmanager
def _runner() -> Iterator[asyncio.Runner]:
    """uvloop when installed, as ``webhook-service serve`` (uvicorn) would use it."""
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        yield runner


if __name__ == "__main__":
    sys.exit(main())
