"""Inbound benchmark: how many FreshBooks webhooks the service takes in, how fast it answers, and
how much memory it holds while doing so, each beside a bare Starlette endpoint under the same load.

Run from the repository root::

    .venv/bin/python tests/benchmarks/bench_inbound.py [--database-url URL] [--concurrency C]
                                                      [--rates R1,R2] [--seconds S]

It prints figures and never asserts: a missed target is printed as MISSED.

Children: the FreshBooks simulator, a sink (``sink_app.py``), the service (``webhook-service
serve``, default settings: its inbox processor and delivery workers run), the bare endpoint
(``bare_app.py``, served with the same uvicorn settings) and this driver, which is the one load
generator for both servers (``aiohttp``, pre-built bodies). The tenant is connected as in
``bench_delivery.py`` (``tenants import``, invoice callback verified by the simulator, a
subscription to the sink), and N invoices are seeded in the simulator. Each request is a FreshBooks
``invoice.update`` form body for a distinct seeded invoice, signed with the callback's verifier
(read from the simulator's ``/_sim/callbacks``), POSTed to the real callback URI: the service
verifies, stores it in its inbox, answers, then hydrates the invoice and delivers it to the sink.
The bare endpoint gets the same bodies at the same path.

1. Closed loop: C lanes each send the next request as soon as the previous answer is read, for
   ``--warmup`` + ``--seconds``; answers completed in the measured window count. Max throughput.
2. Open loop at each steady rate R of ``--rates`` (request i starts at t0 + i/R whatever happened
   to the others); latency = answer time - scheduled start, so a server that falls behind shows it.

After each service phase the driver waits until the sink has received one delivery per accepted
webhook (the backlog drain: hydration, normalization, delivery), and prints how long that took.

Peak RSS: the service process's VmRSS (``/proc/PID/status``) is sampled every 50 ms in each phase
(inbound load, backlog drain) and its VmHWM read at the end; compared with the 200 MB target.

Databases: temporary SQLite files by default; ``--database-url postgresql+asyncpg://USER@HOST/DB``
creates (and drops) fresh databases on that server, as ``bench_delivery.py`` does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
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
    describe_ms,
    free_port,
    latency_stack,
    open_loop,
    percentile,
    pid_of,
    run_benchmark,
    seed_invoices,
    sink_count,
    sink_reset,
    subscribe_sink,
    wait_for_port,
)
from procstats import RssSampler, cpu_seconds, hwm_mb, rss_mb, rss_verdict

from webhook_service.freshbooks.signature import compute_signature

HERE = Path(__file__).resolve().parent
BARE_SCRIPT = HERE / "bare_app.py"
FORM_TYPE = "application/x-www-form-urlencoded"
SIGNATURE_HEADER = "X-FreshBooks-Hmac-SHA256"
DRIVER_BUSY = 0.9  # driver CPU share of one core above which the generator itself may be the limit

Body = tuple[bytes, dict[str, str]]


# -- request bodies ---------------------------------------------------------------------------
def signed_bodies(object_ids: Sequence[int], verifier: str) -> list[Body]:
    """FreshBooks ``invoice.update`` deliveries, one per object, signed as FreshBooks signs them."""
    bodies = []
    for object_id in object_ids:
        fields = {
            "name": "invoice.update",
            "object_id": str(object_id),
            "account_id": ACCOUNT_ID,
            "business_id": str(BUSINESS_ID),
            "identity_id": "1",
            "user_id": "1",
        }
        headers = {"Content-Type": FORM_TYPE, SIGNATURE_HEADER: compute_signature(verifier, fields)}
        bodies.append((urlencode(fields).encode(), headers))
    return bodies


class BodyPool:
    """Hands out bodies in order; for the service each is used once (distinct objects, no dedupe)."""

    def __init__(self, bodies: list[Body], *, cycle: bool) -> None:
        self._iter = itertools.cycle(bodies) if cycle else iter(bodies)
        self.exhausted = False

    def take(self) -> Body | None:
        try:
            return next(self._iter)
        except StopIteration:
            self.exhausted = True
            return None


# -- measuring --------------------------------------------------------------------------------
@dataclass
class Outcome:
    """One phase against one server."""

    latencies: list[float]  # seconds, measured requests only
    window_s: float
    statuses: Counter[str] = field(default_factory=Counter)  # measured requests: "200 accepted", "500", ...
    ok_total: int = 0  # 200s in the whole phase, warm-up included (each is one event to deliver)
    server_cpu: float = math.nan  # share of one core over the measured window
    driver_cpu: float = math.nan
    driver_lag_p99: float | None = None  # open loop: actual - scheduled start
    exhausted: bool = False

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.window_s if self.window_s > 0 else math.nan

    @property
    def p99(self) -> float:
        return percentile(sorted(self.latencies), 99)


class CpuWindow:
    """CPU used by the server process and by this driver between ``start`` and ``stop``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._marks: tuple[float, float, float] | None = None
        self.server = self.driver = math.nan

    def start(self) -> None:
        self._marks = (time.perf_counter(), cpu_seconds(self.pid) or math.nan, time.process_time())

    def stop(self) -> None:
        if self._marks is None:
            return
        wall0, server0, driver0 = self._marks
        wall = time.perf_counter() - wall0
        self.server = ((cpu_seconds(self.pid) or math.nan) - server0) / wall
        self.driver = (time.process_time() - driver0) / wall


async def post(session: aiohttp.ClientSession, url: str, body: Body) -> str:
    """One webhook; returns ``"200 accepted"``-style labels, or the transport error's name."""
    try:
        async with session.post(url, data=body[0], headers=body[1]) as response:
            payload = await response.read()
            if response.status != 200:
                return str(response.status)
            return f"200 {json.loads(payload).get('status', '?')}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return type(exc).__name__


@contextlib.asynccontextmanager
async def client(limit: int) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=limit, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def closed_loop(url: str, pool: BodyPool, pid: int, args: argparse.Namespace, rate: float = 0.0) -> Outcome:
    """``args.concurrency`` lanes, each sending its next request when the last answer is read (``rate`` unused)."""
    loop = asyncio.get_running_loop()
    measure_from = loop.time() + args.warmup
    end = measure_from + args.seconds
    records: list[tuple[float, float, str]] = []  # (finished, latency, status)
    cpu = CpuWindow(pid)

    async def lane(session: aiohttp.ClientSession) -> None:
        while loop.time() < end:
            body = pool.take()
            if body is None:
                return
            started = loop.time()
            status = await post(session, url, body)
            finished = loop.time()
            records.append((finished, finished - started, status))

    async def mark_cpu() -> None:
        await asyncio.sleep(max(0.0, measure_from - loop.time()))
        cpu.start()
        await asyncio.sleep(max(0.0, end - loop.time()))
        cpu.stop()

    async with client(args.concurrency) as session:
        await asyncio.gather(mark_cpu(), *(lane(session) for _ in range(args.concurrency)))
    measured = [r for r in records if measure_from <= r[0] <= end]
    window = min(end, max((r[0] for r in records), default=end)) - measure_from
    return Outcome(
        latencies=[r[1] for r in measured if r[2].startswith("200")],
        window_s=window,
        statuses=Counter(r[2] for r in measured),
        ok_total=sum(r[2].startswith("200") for r in records),
        server_cpu=cpu.server,
        driver_cpu=cpu.driver,
        exhausted=pool.exhausted,
    )


async def steady_rate(url: str, pool: BodyPool, pid: int, args: argparse.Namespace, rate: float) -> Outcome:
    warmup_count = int(rate * args.warmup)
    count = warmup_count + int(rate * args.seconds)
    bodies = [body for body in (pool.take() for _ in range(count)) if body is not None]
    cpu = CpuWindow(pid)
    async with client(limit=1000) as session:

        async def send(i: int, scheduled: float) -> tuple[float, float, float, str]:
            if i == warmup_count:
                cpu.start()
            started = time.time()
            status = await post(session, url, bodies[i])
            return scheduled, started, time.time(), status

        results = await open_loop(len(bodies), rate, send)
        cpu.stop()
    measured = results[warmup_count:]
    # achieved rate: answers over the span from the first measured scheduled start to the last answer
    span = max(finished for _, _, finished, _ in measured) - measured[0][0] if measured else math.nan
    return Outcome(
        latencies=[finished - scheduled for scheduled, _, finished, status in measured if status.startswith("200")],
        window_s=span,
        statuses=Counter(status for _, _, _, status in measured),
        ok_total=sum(status.startswith("200") for *_, status in results),
        server_cpu=cpu.server,
        driver_cpu=cpu.driver,
        driver_lag_p99=percentile(sorted(started - scheduled for scheduled, started, _, _ in measured), 99),
        exhausted=pool.exhausted,
    )


# -- the service and the bare endpoint --------------------------------------------------------
@dataclass
class Servers:
    stack: Stack
    service_url: str  # the real callback URI
    service_pid: int
    bare_url: str
    bare_pid: int
    bodies: list[Body]


async def invoice_callback(client_: httpx.AsyncClient, simulator_url: str) -> tuple[str, str]:
    """The verified invoice callback's URI (on the service) and its verifier, from the simulator."""
    listed = (await client_.get(f"{simulator_url}/_sim/callbacks/{ACCOUNT_ID}")).json()
    for found in listed:
        if found["event"] == "invoice" and found.get("verified") and found.get("verifier"):
            return str(found["uri"]), str(found["verifier"])
    raise RuntimeError(f"the simulator has no verified invoice callback: {listed}")


@contextlib.asynccontextmanager
async def servers(args: argparse.Namespace, databases: Databases, procs: Children) -> AsyncIterator[Servers]:
    async with latency_stack(databases, procs) as stack, httpx.AsyncClient(timeout=60.0) as control:
        tenant_id = await connect_tenant(stack, control)
        await subscribe_sink(stack)
        ids = await seed_invoices(control, stack.simulator_url, args.pool)
        uri, verifier = await invoice_callback(control, stack.simulator_url)
        bare_port = free_port()
        procs.start("bare", [sys.executable, str(BARE_SCRIPT), "--port", str(bare_port)])
        await wait_for_port(bare_port, procs, "bare endpoint")
        print(
            f"   tenant {tenant_id} connected, invoice callback verified, {len(ids)} invoices seeded, "
            "subscription to the sink created"
        )
        bare_url = f"http://127.0.0.1:{bare_port}/webhooks/freshbooks/{uri.rsplit('/', 1)[1]}"
        bodies = signed_bodies(ids, verifier)
        yield Servers(stack, uri, pid_of(procs, "service"), bare_url, pid_of(procs, "bare"), bodies)


async def drain(servers_: Servers, expected: int, timeout: float) -> tuple[float | None, int]:
    """Seconds until the sink has ``expected`` deliveries (None if not within ``timeout``), and the count."""
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=10.0) as control:
        while True:
            servers_.stack.procs.ensure_alive()
            count = await sink_count(control, servers_.stack.sink_url)
            if count >= expected:
                return time.perf_counter() - started, count
            if time.perf_counter() - started > timeout:
                return None, count
            await asyncio.sleep(0.1)


async def reset_sink(servers_: Servers) -> None:
    async with httpx.AsyncClient(timeout=10.0) as control:
        await sink_reset(control, servers_.stack.sink_url)


# -- printing ---------------------------------------------------------------------------------
def print_outcome(label: str, outcome: Outcome) -> None:
    print(f"   {label:<16} {outcome.rate:7.0f} req/s   {describe_ms(outcome.latencies)}")
    lag = "" if outcome.driver_lag_p99 is None else f", driver start lag p99 {outcome.driver_lag_p99 * 1000:.1f} ms"
    print(
        f"   {'':<16} server CPU {outcome.server_cpu:4.0%} of one core, driver CPU {outcome.driver_cpu:4.0%}{lag}; "
        f"load average {os.getloadavg()[0]:.1f}; answers: {dict(outcome.statuses)}"
    )
    if outcome.driver_cpu >= DRIVER_BUSY:
        print(f"   {'':<16} ! the driver was busy most of the window: this figure may be the generator's limit")
    if outcome.exhausted:
        print(f"   {'':<16} ! ran out of seeded invoices (raise --pool): the run stopped early")


def print_ratio(service: Outcome, bare: Outcome) -> None:
    print(
        f"   service / bare:  throughput {service.rate / bare.rate:4.2f}x   "
        f"p50 {percentile(sorted(service.latencies), 50) / percentile(sorted(bare.latencies), 50):4.1f}x   "
        f"p99 {service.p99 / bare.p99:4.1f}x"
    )


async def service_phase(
    name: str,
    run: Callable[..., Any],
    servers_: Servers,
    pool: BodyPool,
    sampler: RssSampler,
    args: argparse.Namespace,
) -> Outcome:
    """One load phase on the service, then the wait for its backlog to reach the sink."""
    await reset_sink(servers_)
    started = time.perf_counter()
    with sampler.phase(f"{name}: inbound load"):
        outcome: Outcome = await run(servers_.service_url, pool, servers_.service_pid, args)
    print_outcome("service", outcome)
    with sampler.phase(f"{name}: backlog drain"):
        waited, delivered = await drain(servers_, outcome.ok_total, args.drain_timeout)
    if waited is None:
        print(
            f"   {'':<16} ! backlog: only {delivered} of {outcome.ok_total} accepted webhooks reached the sink "
            f"within {args.drain_timeout:g} s after the load stopped"
        )
    else:
        total = time.perf_counter() - started
        print(
            f"   {'':<16} backlog: all {outcome.ok_total} accepted webhooks delivered to the sink {waited:.1f} s "
            f"after the load stopped ({outcome.ok_total / total:.0f} events/s through the whole pipeline)"
        )
    return outcome


async def run_all(args: argparse.Namespace, databases: Databases, procs: Children) -> None:
    async with servers(args, databases, procs) as servers_:
        service_pool = BodyPool(servers_.bodies, cycle=False)
        bare_pool = BodyPool(servers_.bodies, cycle=True)
        with RssSampler(servers_.service_pid) as sampler:
            idle_rss = rss_mb(servers_.service_pid)

            print(
                f"\n== 1. Closed loop: {args.concurrency} requests in flight, as fast as answers come "
                f"({args.warmup:g} s warm-up + {args.seconds:g} s measured)"
            )
            bare = await closed_loop(servers_.bare_url, bare_pool, servers_.bare_pid, args)
            print_outcome("bare Starlette", bare)
            service = await service_phase("closed loop", closed_loop, servers_, service_pool, sampler, args)
            print_ratio(service, bare)

            for number, rate in enumerate(args.rates, start=2):
                print(
                    f"\n== {number}. Open loop at a steady {rate:g} requests/s ({args.warmup:g} s warm-up + "
                    f"{args.seconds:g} s measured; latency from the scheduled start)"
                )
                bare = await steady_rate(servers_.bare_url, bare_pool, servers_.bare_pid, args, rate)
                print_outcome("bare Starlette", bare)
                run = functools.partial(steady_rate, rate=rate)
                service = await service_phase(f"{rate:g}/s", run, servers_, service_pool, sampler, args)
                print_ratio(service, bare)

            peak = hwm_mb(servers_.service_pid)
        print(f"\n== {len(args.rates) + 2}. Service process memory (RSS, target <= 200 MB)")
        print(f"   after start-up, tenant connected, before load: {idle_rss or math.nan:.0f} MB")
        for phase, value in sampler.peaks.items():
            print(f"   peak during {phase:<30} {value:6.0f} MB (sampled every {sampler.interval * 1000:.0f} ms)")
        print(f"   peak over the process's life (VmHWM): {rss_verdict(peak)}")
        print(f"   bare endpoint for comparison (VmHWM): {hwm_mb(servers_.bare_pid) or math.nan:.0f} MB")


# == main =====================================================================================
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Inbound webhook throughput, latency and memory (prints figures).")
    add_database_argument(parser)
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight in the closed loop (32)")
    parser.add_argument(
        "--rates", default="100,200", help="steady rates in requests/s, comma-separated: one open-loop phase each"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per phase (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per phase, excluded (2)")
    parser.add_argument("--pool", type=int, default=30000, help="invoices seeded: one per service request (30000)")
    parser.add_argument(
        "--drain-timeout", type=float, default=300.0, help="seconds to wait for the backlog to reach the sink (300)"
    )
    args = parser.parse_args(argv)
    try:
        args.rates = [float(rate) for rate in args.rates.split(",") if rate.strip()]
    except ValueError:
        parser.error("--rates takes numbers separated by commas, e.g. 100,200")
    return checked_database_argument(parser, args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_benchmark(parse_args(argv), "bench-inbound-", run_all)


if __name__ == "__main__":
    sys.exit(main())
