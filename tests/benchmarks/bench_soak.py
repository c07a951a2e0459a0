"""Soak: with retention on, does the database (and the service's memory) stop growing?

Run from the repository root::

    .venv/bin/python tests/benchmarks/bench_soak.py [--database-url URL] [--events N]
                                                   [--retention-days D] [--interval S]

It prints figures and never asserts. Children, as in ``bench_delivery.py``: the FreshBooks
simulator, the sink (``sink_app.py``), the service (``webhook-service serve``, its own processor,
delivery workers and retention loop running) and this driver. The retention window is minutes
(``RETENTION_DAYS=0.003`` is 4.3 minutes, ``RETENTION_RESPONSE_BODY_DAYS=0.001``,
``RETENTION_INTERVAL=30``), so a run of a few windows shows whether storage levels off.

Each event goes the whole way: the driver changes an invoice in the simulator (``PUT
/_sim/objects/...``: its ``updated`` stamp and content move, so it is a new version), then POSTs a
FreshBooks ``invoice.update`` webhook for it to the service's callback URI, signed with the
callback's verifier as FreshBooks signs (the simulator's own webhooks are dropped: sending them
from one thread is what limits it to ~100/s). The service verifies and commits it to its inbox,
fetches the invoice from the simulator, commits the normalized event, its ledger row and its
delivery, and POSTs it to the sink (an attempt row with the response body). ``--lanes`` requests
run at once; the driver keeps at most ``--outstanding`` events between its POST and the sink, and
cycles through ``--pool`` invoices, more than that, so an invoice changes again only after its
last event was delivered (no two changes fold into one event). Each webhook carries its own
``user_id``, as webhooks of different users do, so none is taken for a redelivery.

Every ``--interval`` seconds: elapsed time, webhooks accepted, events delivered (the sink's count),
the database's size (SQLite: the file plus its WAL; PostgreSQL: ``pg_database_size``), the
service's RSS, rows per table, what the purge deleted so far (the service's
``webhook_service_retention_purged_rows_total``), and the load average. At the end, for size and
RSS: the growth over the last window (retention window plus one purge interval) against the growth
over the first; ``levelled off`` when the last is under a quarter of the first.

Databases as in the other benchmarks: a temporary SQLite file by default, ``--database-url`` for a
fresh database on a PostgreSQL server (dropped at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import httpx

# siblings: a script's own directory is on sys.path
from bench_delivery import (
    ACCOUNT_ID,
    BUSINESS_ID,
    Children,
    Databases,
    Stack,
    add_database_argument,
    checked_database_argument,
    connect_tenant,
    pid_of,
    pipeline_stack,
    run_benchmark,
    seed_invoices,
    sink_count,
    subscribe_sink,
)
from bench_inbound import FORM_TYPE, SIGNATURE_HEADER, invoice_callback
from procstats import hwm_mb, rss_mb
from scrape import samples
from sqlalchemy import and_, func, or_, select, text
from sqlalchemy.engine import make_url

from webhook_service.freshbooks.signature import compute_signature
from webhook_service.storage.database import Database
from webhook_service.storage.models import (
    Delivery,
    DeliveryAttempt,
    Event,
    InboxEvent,
    ObjectVersion,
)
from webhook_service.storage.retention import TABLES

TABLE_MODELS = {
    "inbox_events": InboxEvent,
    "events": Event,
    "deliveries": Delivery,
    "delivery_attempts": DeliveryAttempt,
    "object_versions": ObjectVersion,
}
LEVELLED = 0.25  # last window's growth under this share of the first window's: levelled off
DRAIN_DEADLINE_S = 600.0
STALL_S = 60.0


@dataclass
class Sample:
    at: float  # seconds since the load started
    accepted: int
    delivered: int
    db_bytes: int
    rss_mb: float | None
    rows: dict[str, int]
    purged: dict[str, float]
    load: float


@dataclass
class Progress:
    accepted: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    delivered: int = 0
    sent: int = 0
    lost: int = 0
    """Accepted webhooks the driver stopped waiting for (no event reached the sink within STALL_S)."""


# -- the stack --------------------------------------------------------------------------------
def soak_stack(
    args: argparse.Namespace, databases: Databases, procs: Children
) -> contextlib.AbstractAsyncContextManager[Stack]:
    """Simulator, sink and service (retention in minutes, no backfill sweeps), migrated and ready."""
    settings = {
        "RETENTION_DAYS": str(args.retention_days),
        "RETENTION_RESPONSE_BODY_DAYS": str(args.body_days),
        "RETENTION_INTERVAL": str(args.interval),
        "BACKFILL_ENABLED": "false",  # every change arrives as a webhook; sweeps would only re-list
    }
    return pipeline_stack(databases, procs, "soak", settings=settings)


def webhook(object_id: int, user_id: int, verifier: str) -> tuple[bytes, dict[str, str]]:
    fields = {
        "name": "invoice.update",
        "object_id": str(object_id),
        "account_id": ACCOUNT_ID,
        "business_id": str(BUSINESS_ID),
        "identity_id": "1",
        "user_id": str(user_id),
    }
    return urlencode(fields).encode(), {
        "Content-Type": FORM_TYPE,
        SIGNATURE_HEADER: compute_signature(verifier, fields),
    }


# -- measuring --------------------------------------------------------------------------------
class Meter:
    """Reads the figures of one sample: sizes and rows from the database, RSS from /proc, purge
    counts from the service's /metrics."""

    def __init__(self, stack: Stack, service_pid: int) -> None:
        self.stack = stack
        self.pid = service_pid
        self.db = Database(stack.database_url)
        self.sqlite_path = make_url(stack.database_url).database if self.db.is_sqlite else None

    async def close(self) -> None:
        await self.db.dispose()

    async def db_bytes(self) -> int:
        if self.sqlite_path:
            return sum(os.path.getsize(p) for p in (self.sqlite_path, self.sqlite_path + "-wal") if os.path.exists(p))
        async with self.db.sessions() as session:
            return int((await session.execute(text("SELECT pg_database_size(current_database())"))).scalar_one())

    async def rows(self) -> dict[str, int]:
        counts = {}
        async with self.db.sessions() as session:
            for name, model in TABLE_MODELS.items():
                counts[name] = int((await session.execute(select(func.count()).select_from(model))).scalar_one())
        return counts

    async def purged(self, client: httpx.AsyncClient) -> dict[str, float]:
        metrics = (await client.get(f"{self.stack.service_url}/metrics")).text
        found = dict.fromkeys(TABLES, 0.0)
        for sample in samples(metrics, "webhook_service_retention_purged_rows_total"):
            found[sample.labels["table"]] = sample.value
        return found

    async def unfinished(self) -> dict[str, int]:
        """Inbox events and deliveries not in a final state (due now or waiting for a retry)."""
        async with self.db.sessions() as session:
            inbox = await session.execute(
                select(InboxEvent.status, func.count())
                .where(
                    or_(
                        InboxEvent.status == "pending",
                        and_(  # a redelivery awaiting its recheck
                            InboxEvent.status == "duplicate",
                            InboxEvent.processed_at.is_(None),
                            InboxEvent.next_attempt_at.is_not(None),
                        ),
                    )
                )
                .group_by(InboxEvent.status)
            )
            found = {f"inbox {status}": int(count) for status, count in inbox.all()}
            deliveries = await session.execute(
                select(Delivery.status, func.count())
                .where(Delivery.status.in_(("pending", "failed")))
                .group_by(Delivery.status)
            )
            found.update({f"deliveries {status}": int(count) for status, count in deliveries.all()})
        return {key: count for key, count in found.items() if count}

    async def problems(self) -> dict[str, int]:
        """Inbox events that failed for good, and deliveries that went dead, by their last error."""
        async with self.db.sessions() as session:
            rows = await session.execute(
                select(InboxEvent.last_error, func.count())
                .where(InboxEvent.status == "failed")
                .group_by(InboxEvent.last_error)
            )
            found = {f"inbox failed: {error}": int(count) for error, count in rows.all()}
            rows = await session.execute(
                select(Delivery.last_error, func.count()).where(Delivery.status == "dead").group_by(Delivery.last_error)
            )
            found.update({f"delivery dead: {error}": int(count) for error, count in rows.all()})
        return found

    async def vacuum_stats(self) -> list[tuple[str, int, int, int]]:
        """PostgreSQL: per table, live and dead rows and how often autovacuum has run (empty on SQLite)."""
        if self.sqlite_path:
            return []
        async with self.db.sessions() as session:
            rows = await session.execute(
                text(
                    "SELECT relname, n_live_tup, n_dead_tup, autovacuum_count FROM pg_stat_user_tables "
                    "WHERE relname = ANY(:tables) ORDER BY relname"
                ),
                {"tables": list(TABLE_MODELS)},
            )
            return [(str(name), int(live), int(dead), int(runs)) for name, live, dead, runs in rows.all()]

    async def sample(self, client: httpx.AsyncClient, started: float, progress: Progress) -> Sample:
        return Sample(
            at=time.monotonic() - started,
            accepted=progress.accepted,
            delivered=progress.delivered,
            db_bytes=await self.db_bytes(),
            rss_mb=rss_mb(self.pid),
            rows=await self.rows(),
            purged=await self.purged(client),
            load=os.getloadavg()[0],
        )


def print_header() -> None:
    print(
        f"   {'t s':>6} {'accepted':>9} {'delivered':>9} {'db MB':>7} {'rss MB':>7} {'load':>5}   "
        f"{'inbox':>7} {'events':>7} {'deliv':>7} {'attempts':>8} {'ledger':>7}   purged so far (rows)"
    )


def print_sample(sample: Sample) -> None:
    rows = sample.rows
    purged = sum(sample.purged.values())
    rss = f"{sample.rss_mb:7.1f}" if sample.rss_mb is not None else "   gone"
    print(
        f"   {sample.at:6.0f} {sample.accepted:9d} {sample.delivered:9d} {sample.db_bytes / 1e6:7.1f} {rss} "
        f"{sample.load:5.2f}   {rows['inbox_events']:7d} {rows['events']:7d} {rows['deliveries']:7d} "
        f"{rows['delivery_attempts']:8d} {rows['object_versions']:7d}   {purged:,.0f}",
        flush=True,
    )


# -- driving ----------------------------------------------------------------------------------
async def drive(
    args: argparse.Namespace, stack: Stack, uri: str, verifier: str, ids: list[int], progress: Progress
) -> None:
    """``args.events`` changes and webhooks, ``args.lanes`` at a time, at most ``args.outstanding``
    not yet at the sink."""
    numbers = itertools.count()
    connector = aiohttp.TCPConnector(limit=args.lanes * 2)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def lane() -> None:
            while (i := next(numbers)) < args.events:
                waited = time.monotonic()
                while progress.accepted - progress.delivered - progress.lost >= args.outstanding:
                    if time.monotonic() - waited > STALL_S:  # those events will not come: stop waiting for them
                        progress.lost = progress.accepted - progress.delivered
                        break
                    await asyncio.sleep(0.02)
                object_id = ids[i % len(ids)]
                change = f"{stack.simulator_url}/_sim/objects/{ACCOUNT_ID}/invoice/{object_id}"
                async with session.put(change, json={"notes": f"soak {i}"}) as response:
                    response.raise_for_status()
                body, headers = webhook(object_id, i + 2, verifier)
                progress.sent += 1
                try:
                    async with session.post(uri, data=body, headers=headers) as response:
                        await response.read()
                        status = response.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    progress.refused[type(exc).__name__] = progress.refused.get(type(exc).__name__, 0) + 1
                    continue
                if status == 200:
                    progress.accepted += 1
                else:
                    progress.refused[str(status)] = progress.refused.get(str(status), 0) + 1

        await asyncio.gather(*(lane() for _ in range(args.lanes)))


async def follow_sink(stack: Stack, progress: Progress, stop: asyncio.Event) -> None:
    """Keep ``progress.delivered`` current (the driver's flow control reads it)."""
    async with httpx.AsyncClient(timeout=10.0) as client:
        while not stop.is_set():
            progress.delivered = await sink_count(client, stack.sink_url)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)


QUIET_LEVELS = frozenset({"debug", "info"})
"""The levels of the service's ordinary work: a line per webhook, request and event."""


def service_log_lines(path: Path) -> Counter[tuple[str, str, str]]:
    """The service's warnings and worse (it logs at the default ``info``) by level, event and the
    last line of the first such line's error or traceback."""
    found: Counter[tuple[str, str, str]] = Counter()
    why: dict[tuple[str, str], str] = {}
    with contextlib.suppress(OSError), path.open(errors="replace") as log:
        for line in log:
            try:
                record = json.loads(line)
            except ValueError:
                record = {"level": "text", "event": line.strip()[:80]}
            if not isinstance(record, dict) or record.get("level") in QUIET_LEVELS:
                continue
            key = (str(record.get("level", "?")), str(record.get("event", "?"))[:80])
            detail = [
                text_
                for text_ in str(record.get("exception") or record.get("error") or "").strip().splitlines()
                if not text_.startswith(("(Background", "[SQL"))
            ]
            why.setdefault(key, detail[-1][:160] if detail else "")
            found[(*key, why[key])] += 1
    return found


# -- the verdict ------------------------------------------------------------------------------
def growth(samples: list[Sample], value: str, window: float) -> tuple[float, float] | None:
    """(growth over the first window, growth over the last), or None if the run is under two windows."""
    if not samples or samples[-1].at < 2 * window:
        return None

    def at(moment: float) -> float:
        nearest = min(samples, key=lambda s: abs(s.at - moment))
        return float(getattr(nearest, value) or 0.0)

    end = samples[-1].at
    return at(window) - at(0), at(end) - at(end - window)


def print_verdict(samples: list[Sample], window: float) -> None:
    print(f"\n== Levelling off (window = retention + one purge interval = {window:.0f} s)")
    for label, value, unit, scale in (("database size", "db_bytes", "MB", 1e6), ("service RSS", "rss_mb", "MB", 1.0)):
        found = growth(samples, value, window)
        if found is None:
            print(f"   {label}: the run is shorter than two windows; nothing to compare")
            continue
        first, last = (x / scale for x in found)
        share = last / first if first > 0 else float("inf") if last > 0 else 0.0
        verdict = "levelled off" if last <= max(first, 0.0) * LEVELLED or last <= 0 else "STILL GROWING"
        print(
            f"   {label}: +{first:.1f} {unit} over the first window, {last:+.1f} {unit} over the last "
            f"({share:.0%} of the first) -> {verdict}"
        )


# -- main -------------------------------------------------------------------------------------
async def soak(args: argparse.Namespace, databases: Databases, procs: Children) -> None:
    window = args.retention_days * 86400 + args.interval
    print(
        f"\n== Soak: {args.events:,} events; RETENTION_DAYS={args.retention_days:g} ({args.retention_days * 1440:.1f} "
        f"min), RETENTION_RESPONSE_BODY_DAYS={args.body_days:g}, RETENTION_INTERVAL={args.interval:g} s"
    )
    async with soak_stack(args, databases, procs) as stack, httpx.AsyncClient(timeout=60.0) as control:
        tenant_id = await connect_tenant(stack, control)
        await subscribe_sink(stack)
        ids = await seed_invoices(control, stack.simulator_url, args.pool)
        uri, verifier = await invoice_callback(control, stack.simulator_url)
        (
            await control.post(f"{stack.simulator_url}/_sim/delivery-settings", json={"drop_rate": 1.0})
        ).raise_for_status()
        print(
            f"   tenant {tenant_id}, {len(ids)} invoices, a subscription to the sink; {args.lanes} lanes, "
            f"at most {args.outstanding} events in flight"
        )
        meter = Meter(stack, pid_of(procs, "service"))
        progress = Progress()
        stop = asyncio.Event()
        follower = asyncio.create_task(follow_sink(stack, progress, stop))
        samples: list[Sample] = []
        started = time.monotonic()
        driver = asyncio.create_task(drive(args, stack, uri, verifier, ids, progress))
        print_header()
        try:
            samples.append(await meter.sample(control, started, progress))
            print_sample(samples[-1])
            while not driver.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(driver), args.interval)
                procs.ensure_alive()
                await control.post(f"{stack.simulator_url}/_sim/reset-logs")  # its request log grows otherwise
                samples.append(await meter.sample(control, started, progress))
                print_sample(samples[-1])
            await driver
            pushed = time.monotonic() - started
            deadline = time.monotonic() + DRAIN_DEADLINE_S
            while (unfinished := await meter.unfinished()) and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            drained = time.monotonic() - started
            problems = await meter.problems()
            vacuum_stats = await meter.vacuum_stats()
            samples.append(await meter.sample(control, started, progress))
            print_sample(samples[-1])
        finally:
            stop.set()
            await follower
            await meter.close()
        print(
            f"\n   {progress.accepted:,} webhooks accepted in {pushed:.0f} s ({progress.accepted / pushed:.0f}/s), "
            f"{progress.delivered:,} events at the sink after {drained:.0f} s"
        )
        if progress.refused:
            print(f"   ! not accepted: {progress.refused}")
        if unfinished:
            print(f"   ! still unfinished after {DRAIN_DEADLINE_S:g} s: {unfinished}")
        for problem, count in problems.items():
            print(f"   ! {count} x {problem}")
        for (level, event, why), count in service_log_lines(procs.log_dir / "service.log").most_common(8):
            print(f"   ! service log: {count} x {level} {event}{f' ({why})' if why else ''}")
        if progress.lost:
            print(f"   ! the driver stopped waiting for {progress.lost} events after {STALL_S:g} s")
        final = samples[-1]
        print(f"   purged in all: {', '.join(f'{t} {int(n):,}' for t, n in final.purged.items() if n) or 'nothing'}")
        print(f"   service peak RSS over its life (VmHWM): {hwm_mb(meter.pid) or float('nan'):.0f} MB")
        for name, live, dead, runs in vacuum_stats:
            print(f"   {name}: {live:,} live rows, {dead:,} dead, autovacuum ran {runs} times")
        print_verdict(samples[:-1] if len(samples) > 2 else samples, window)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Storage and memory under a long stream, with retention on.")
    add_database_argument(parser)
    parser.add_argument("--events", type=int, default=200_000, help="events to push through (200000)")
    parser.add_argument("--retention-days", type=float, default=0.003, help="RETENTION_DAYS (0.003: 4.3 min)")
    parser.add_argument("--body-days", type=float, default=0.001, help="RETENTION_RESPONSE_BODY_DAYS (0.001)")
    parser.add_argument("--interval", type=float, default=30.0, help="RETENTION_INTERVAL and sampling, s (30)")
    parser.add_argument("--lanes", type=int, default=32, help="change + webhook pairs in flight (32)")
    parser.add_argument("--outstanding", type=int, default=1000, help="most events between POST and sink (1000)")
    parser.add_argument("--pool", type=int, default=3000, help="invoices changed in turn; > --outstanding (3000)")
    args = parser.parse_args(argv)
    if args.pool <= args.outstanding + args.lanes:
        parser.error("--pool must exceed --outstanding + --lanes: an invoice must not change again in flight")
    return checked_database_argument(parser, args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_benchmark(parse_args(argv), "bench-soak-", soak)


if __name__ == "__main__":
    sys.exit(main())
