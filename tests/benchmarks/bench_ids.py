"""What the ids of events and deliveries cost the database as its tables grow: random ids (the
service's scheme before ``storage.columns.time_ordered_id``) beside ids that begin with their
creation time, in one run.

Run from the repository root::

    .venv/bin/python tests/benchmarks/bench_ids.py [--database-url URL] [--sizes 10000,100000]

It prints figures and never asserts.

Each scheme gets a fresh database with the service's schema (its migrations), a tenant and a
subscription. Events then go in as the pipeline writes them, through the service's own Core
helpers (``storage.bulk``), in batches of ``--batch`` (32) with two commits a batch: the events and
their deliveries; then each delivery's outcome (the row updated, an attempt added). After the
tables reach each size of ``--sizes``, ``--measure`` (3,200) more events are timed: CPU per event of
this process (SQLite works inside it) and, on PostgreSQL, of the server's processes too. The
schemes alternate size by size, so both meet the same machine load; the ratio leads.

Databases: temporary SQLite files by default; ``--database-url postgresql+asyncpg://USER@HOST/DB``
creates (and drops) fresh databases on that server.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench_delivery import Children, Databases, add_database_argument, checked_database_argument, run_benchmark
from bench_scaling import database_cpu
from pydantic import SecretStr
from records import tenant_row

from webhook_service.config import Settings
from webhook_service.core.crypto import generate_key
from webhook_service.runtime import Runtime
from webhook_service.storage.bulk import insert_rows, update_by_id
from webhook_service.storage.columns import time_ordered_id, utcnow
from webhook_service.storage.models import Delivery, DeliveryAttempt, Event, Subscription

PAYLOAD = '{"object": "' + "x" * 600 + '"}'  # about an invoice event's size


def random_id(prefix: str) -> str:
    """The scheme before: 96 random bits."""
    return f"{prefix}_{secrets.token_hex(12)}"


SCHEMES: dict[str, Callable[[str], str]] = {"random": random_id, "time-ordered": time_ordered_id}


@dataclass
class Store:
    scheme: str
    runtime: Runtime
    rows: int = 0


async def open_store(scheme: str, url: str, stack: contextlib.AsyncExitStack) -> Store:
    settings = Settings(database_url=url, secret_key=SecretStr(generate_key()), _env_file=None, log_level="warning")
    runtime = await stack.enter_async_context(Runtime.open(settings, migrate_schema=True))
    now = utcnow()
    async with runtime.db.sessions() as session:
        session.add(tenant_row(runtime.box, "ten_bench", account_id="ACC", business_id=1, now=now))
        session.add(
            Subscription(
                id="sub_bench", url="http://127.0.0.1:9/", event_types='["*"]', secret_enc=runtime.box.encrypt("s")
            )
        )
        await session.commit()
    return Store(scheme, runtime)


async def write(store: Store, count: int, batch: int) -> None:
    """``count`` events through the pipeline's writes, ``batch`` at a time."""
    make = SCHEMES[store.scheme]
    db = store.runtime.db
    for start in range(0, count, batch):
        now = utcnow()
        events = [
            {
                "id": make("evt"),
                "tenant_id": "ten_bench",
                "type": "invoice.updated",
                "resource": "invoice",
                "object_id": str(store.rows + start + n),
                "origin": "webhook",
                "occurred_at": now,
                "payload": PAYLOAD,
                "inbox_event_id": None,
                "created_at": now,
                "received_at": now,
            }
            for n in range(min(batch, count - start))
        ]
        deliveries = [
            {
                "id": make("dlv"),
                "event_id": event["id"],
                "subscription_id": "sub_bench",
                "status": "pending",
                "attempts": 0,
                "schedule_base": 0,
                "next_attempt_at": now,
                "created_at": now,
                "updated_at": now,
            }
            for event in events
        ]
        async with db.sessions() as session:
            await insert_rows(session, Event, events)
            await insert_rows(session, Delivery, deliveries)
            await session.commit()
        async with db.sessions() as session:
            await update_by_id(
                session,
                Delivery,
                [
                    {"id": d["id"], "status": "succeeded", "attempts": 1, "completed_at": now, "updated_at": now}
                    for d in deliveries
                ],
            )
            await insert_rows(
                session,
                DeliveryAttempt,
                [
                    {"delivery_id": d["id"], "number": 1, "started_at": now, "status_code": 200, "latency_ms": 1.0}
                    for d in deliveries
                ],
            )
            await session.commit()
    store.rows += count


def cpu_now() -> tuple[float, float]:
    times = os.times()
    return times.user + times.system, database_cpu() or 0.0


async def measure(store: Store, count: int, batch: int) -> tuple[float, float]:
    """Microseconds of CPU per event: this process's, the database server's."""
    before, server_before = cpu_now()
    await write(store, count, batch)
    after, server_after = cpu_now()
    return (after - before) / count * 1e6, (server_after - server_before) / count * 1e6


async def run(args: argparse.Namespace, databases: Databases, procs: Children) -> None:
    postgres = databases.backend == "postgresql"
    print(
        f"\n== Pipeline writes per event (events, deliveries, outcomes, attempts; batches of {args.batch}, "
        f"two commits a batch), {args.measure} events timed at each table size"
    )
    async with contextlib.AsyncExitStack() as stack:
        stores = [
            await open_store(scheme, await databases.create(scheme.replace("-", "_")), stack) for scheme in SCHEMES
        ]
        for size in args.sizes:
            figures: dict[str, tuple[float, float]] = {}
            for store in stores:  # alternating, size by size
                await write(store, max(0, size - store.rows), 500)
                figures[store.scheme] = await measure(store, args.measure, args.batch)
            line = []
            for scheme, (client, server) in figures.items():
                shown = f"{client + server:6.0f} µs" + (
                    f" ({client:.0f} here + {server:.0f} PostgreSQL)" if postgres else ""
                )
                line.append(f"{scheme} {shown}")
            random_total, ordered_total = (sum(figures[s]) for s in SCHEMES)
            print(
                f"   {size:>9,} rows: "
                + "; ".join(line)
                + f"   time-ordered / random: {ordered_total / random_total:.2f}x"
                f"; load average {os.getloadavg()[0]:.2f}",
                flush=True,
            )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Random against time-ordered ids as the tables grow (prints figures).")
    add_database_argument(parser)
    parser.add_argument("--sizes", default="10000,100000", help="table sizes (events) to measure at (10000,100000)")
    parser.add_argument("--measure", type=int, default=3200, help="events timed at each size (3200)")
    parser.add_argument("--batch", type=int, default=32, help="events per transaction (32)")
    args = parser.parse_args(argv)
    try:
        args.sizes = sorted(int(size) for size in args.sizes.split(","))
    except ValueError:
        parser.error("--sizes takes whole numbers separated by commas")
    return checked_database_argument(parser, args)


def main(argv: Sequence[str] | None = None) -> int:
    started = time.perf_counter()
    code = run_benchmark(parse_args(argv), "bench-ids-", run)
    print(f"\n({time.perf_counter() - started:.0f} s)")
    return code


if __name__ == "__main__":
    sys.exit(main())
