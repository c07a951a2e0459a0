"""Console benchmark: every list page of the console with a million deliveries in the database.

Run from the repository root::

    .venv/bin/python tests/benchmarks/bench_console.py [--deliveries 1000000] [--rounds 5]

It prints figures and never asserts; a page slower than the target (1 s) is printed as MISSED.

A temporary SQLite database is migrated by ``webhook-service migrate`` and filled directly (not
through the pipeline, which would take hours): 100 tenants, 5 subscriptions, one event per five
deliveries, one attempt per delivery, created over the last 30 days (so the overview's last day holds
about a thirtieth of them); 90% of the deliveries succeeded, 5% failed, 3% dead, 2% pending; 1% of
the events came from the backfill. Then ``webhook-service serve`` starts on it, the driver signs in
to the console as a browser does, and asks each page ``--rounds`` times (one request at a time):
the median and the slowest are printed beside the machine's load, and the first request of each
page (a cold cache) is kept apart. Deep pages follow the "Older" link as a reader would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from bench_delivery import Children, free_port, run_cli, service_command, verdict, wait_for_ok
from sqlalchemy import create_engine, insert

from webhook_service.core.crypto import SecretBox, generate_key
from webhook_service.storage.bulk import table_of
from webhook_service.storage.columns import utcnow
from webhook_service.storage.models import BackfillState, Delivery, DeliveryAttempt, Event, Subscription, Tenant

TARGET_S = 1.0
TENANTS = 100
SUBSCRIPTIONS = 5
CHUNK = 20_000
ADMIN_TOKEN = "bench-console-admin-token"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
OLDER = re.compile(r'href="(/console/[a-z]+\?[^"]+)" rel="next"')


def load() -> str:
    return "load average {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


def seed(path: Path, secret_key: str, deliveries: int) -> dict[str, str]:
    """Fill the migrated database; returns ids the pages are asked about."""
    box = SecretBox([secret_key])
    now = utcnow()
    span = timedelta(days=30)
    engine = create_engine(f"sqlite:///{path}")
    events = max(1, deliveries // SUBSCRIPTIONS)
    tenant_ids = [f"ten_bench{n:05d}" for n in range(TENANTS)]
    subscription_ids = [f"sub_bench{n:03d}" for n in range(SUBSCRIPTIONS)]
    with engine.begin() as connection:
        connection.execute(
            insert(table_of(Tenant)),
            [
                {
                    "id": tenant_id,
                    "account_id": f"ACC{n}",
                    "business_id": 100_000 + n,
                    "name": f"Business {n}",
                    "role": "owner",
                    "scopes": "",
                    "status": "reauth_required" if n % 25 == 0 else "active",
                    "status_reason": "invalid_grant: revoked" if n % 25 == 0 else None,
                    "access_token_enc": box.encrypt("access"),
                    "refresh_token_enc": box.encrypt("refresh"),
                    "access_expires_at": now + timedelta(hours=1),
                    "token_version": 1,
                    "created_at": now - span + timedelta(minutes=n),
                    "updated_at": now,
                }
                for n, tenant_id in enumerate(tenant_ids)
            ],
        )
        connection.execute(
            insert(table_of(Subscription)),
            [
                {
                    "id": subscription_id,
                    "url": f"https://hooks.example.com/{n}",
                    "event_types": '["*"]',
                    "description": f"consumer {n}",
                    "enabled": True,
                    "secret_enc": box.encrypt("whsec_bench"),
                    "rate_window_count": 0,
                    "strict_order": False,
                    "created_at": now - span,
                    "updated_at": now - span,
                }
                for n, subscription_id in enumerate(subscription_ids)
            ],
        )
        connection.execute(
            insert(table_of(BackfillState)),
            [
                {"tenant_id": t, "resource": "invoice", "last_scanned": 10, "last_emitted": 1, "recovered_total": 7}
                for t in tenant_ids
            ],
        )

    def at(n: int, total: int) -> Any:
        return now - span + span * (n / total)

    def event_rows() -> Iterator[dict[str, Any]]:
        for n in range(events):
            created = at(n, events)
            yield {
                "id": f"evt_bench{n:09d}",
                "tenant_id": tenant_ids[n % TENANTS],
                "type": "invoice.updated",
                "resource": "invoice",
                "object_id": str(n),
                "origin": "backfill" if n % 100 == 0 else "webhook",
                "occurred_at": created,
                "payload": json.dumps({"type": "invoice.updated", "data": {"object": {"id": n}}}),
                "created_at": created,
            }

    statuses = ["succeeded"] * 90 + ["failed"] * 5 + ["dead"] * 3 + ["pending"] * 2

    def delivery_rows() -> Iterator[dict[str, Any]]:
        for n in range(deliveries):
            created = at(n, deliveries)
            status = statuses[(n * 7) % 100]
            yield {
                "id": f"dlv_bench{n:09d}",
                "event_id": f"evt_bench{n // SUBSCRIPTIONS:09d}",
                "subscription_id": subscription_ids[n % SUBSCRIPTIONS],
                "status": status,
                "attempts": 1,
                "schedule_base": 1,
                "next_attempt_at": created + timedelta(minutes=5) if status in ("pending", "failed") else None,
                "last_status_code": 200 if status == "succeeded" else 500,
                "created_at": created,
                "updated_at": created,
                "completed_at": created if status in ("succeeded", "dead") else None,
            }

    def attempt_rows() -> Iterator[dict[str, Any]]:
        for n in range(deliveries):
            status = statuses[(n * 7) % 100]
            yield {
                "delivery_id": f"dlv_bench{n:09d}",
                "number": 1,
                "started_at": at(n, deliveries),
                "status_code": 200 if status == "succeeded" else 500,
                "latency_ms": 12.0,
                "error": None if status == "succeeded" else "HTTP 500",
            }

    for table, rows in (
        (table_of(Event), event_rows()),
        (table_of(Delivery), delivery_rows()),
        (table_of(DeliveryAttempt), attempt_rows()),
    ):
        with engine.begin() as connection:
            while chunk := [row for _, row in zip(range(CHUNK), rows, strict=False)]:
                connection.execute(insert(table), chunk)
    engine.dispose()  # no ANALYZE: the service never runs one, so the planner works without statistics
    return {
        "tenant_id": tenant_ids[1],
        "subscription_id": subscription_ids[2],
        "event_id": f"evt_bench{events // 2:09d}",
        "delivery_id": f"dlv_bench{deliveries // 2:09d}",
    }


async def sign_in(client: httpx.AsyncClient) -> None:
    page = await client.get("/console/sign-in")
    csrf = CSRF.search(page.text)
    assert csrf, page.text[:500]
    answer = await client.post("/console/sign-in", data={"csrf_token": csrf.group(1), "token": ADMIN_TOKEN})
    if answer.status_code != 303:
        raise RuntimeError(f"sign-in answered {answer.status_code}")


async def timed(client: httpx.AsyncClient, path: str, rounds: int) -> tuple[float, list[float], int, str]:
    """The first request's seconds, the rest's, the status and the body of the last."""
    times = []
    answer = None
    for _ in range(rounds + 1):
        started = time.perf_counter()
        answer = await client.get(path)
        times.append(time.perf_counter() - started)
    assert answer is not None
    return times[0], times[1:], answer.status_code, answer.text


async def deep(client: httpx.AsyncClient, path: str, pages: int) -> str:
    """The path of the page ``pages`` "Older" links after ``path``."""
    for _ in range(pages):
        found = OLDER.search((await client.get(path)).text)
        if not found:
            break
        path = found.group(1).replace("&amp;", "&")
    return path


async def run(args: argparse.Namespace) -> int:
    print("== Machine")
    print(f"   CPUs: {os.cpu_count()}; {load()}; Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="bench-console-") as directory:
        folder = Path(directory)
        database = folder / "console.db"
        port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "ADMIN_", "SECRET_"))},
            "DATABASE_URL": f"sqlite+aiosqlite:///{database}",
            "SECRET_KEY": generate_key(),
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
            "LOG_LEVEL": "warning",
            "DELIVERY_WORKERS": "0",  # nothing is sent: the pages are measured, not the pipeline
            "BACKFILL_ENABLED": "false",
            "FRESHBOOKS_API_BASE": "http://127.0.0.1:9",
            "FRESHBOOKS_AUTH_BASE": "http://127.0.0.1:9",
        }
        await run_cli(["migrate"], env, folder)
        started = time.perf_counter()
        ids = seed(database, env["SECRET_KEY"], args.deliveries)
        size = database.stat().st_size / 1e6
        print(
            f"   seeded {args.deliveries:,} deliveries, {args.deliveries:,} attempts, "
            f"{max(1, args.deliveries // SUBSCRIPTIONS):,} events, {TENANTS} tenants, {SUBSCRIPTIONS} subscriptions "
            f"in {time.perf_counter() - started:.0f} s (not timed); database {size:,.0f} MB"
        )
        procs = Children(folder)
        try:
            procs.start("service", [*service_command(), "serve", "--port", str(port)], env=env)
            base = f"http://127.0.0.1:{port}"
            await wait_for_ok(f"{base}/readyz", procs, "service")
            async with httpx.AsyncClient(base_url=base, timeout=60.0) as client:
                await sign_in(client)
                pages = [
                    ("overview", "/console/"),
                    ("tenants", "/console/tenants"),
                    ("a tenant", f"/console/tenants/{ids['tenant_id']}"),
                    ("subscriptions", "/console/subscriptions"),
                    ("a subscription", f"/console/subscriptions/{ids['subscription_id']}"),
                    ("events", "/console/events"),
                    ("events, origin backfill", "/console/events?origin=backfill"),
                    ("events of a tenant", f"/console/events?tenant_id={ids['tenant_id']}"),
                    ("an event", f"/console/events/{ids['event_id']}"),
                    ("deliveries", "/console/deliveries"),
                    ("deliveries, dead", "/console/deliveries?status=dead"),
                    ("deliveries, pending", "/console/deliveries?status=pending"),
                    ("deliveries of a subscription", f"/console/deliveries?subscription_id={ids['subscription_id']}"),
                    ("deliveries, 20 pages deep", await deep(client, "/console/deliveries", 20)),
                    ("deliveries, dead, 20 pages deep", await deep(client, "/console/deliveries?status=dead", 20)),
                    ("a delivery", f"/console/deliveries/{ids['delivery_id']}"),
                ]
                print(f"\n== Console pages, one request at a time, {args.rounds} rounds each (target < {TARGET_S:g} s)")
                slowest = 0.0
                for label, path in pages:
                    first, rest, status, body = await timed(client, path, args.rounds)
                    worst = max(rest)
                    slowest = max(slowest, worst, first)
                    print(
                        f"   {label:<34} {status}  median {statistics.median(rest) * 1000:7.1f} ms  "
                        f"slowest {worst * 1000:7.1f} ms  first {first * 1000:7.1f} ms  {len(body) / 1024:5.0f} KiB"
                    )
                print(f"   slowest of all: {slowest * 1000:.0f} ms -> {verdict(slowest < TARGET_S)}; {load()}")
        finally:
            procs.stop_all()
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The console's pages with a million deliveries (prints figures).")
    parser.add_argument("--deliveries", type=int, default=1_000_000, help="deliveries seeded (1,000,000)")
    parser.add_argument("--rounds", type=int, default=5, help="requests per page after the first (5)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
