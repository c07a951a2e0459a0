"""Scaling benchmark: the web role against a bare endpoint, the whole pipeline with 1 and 2 worker
processes, and the CPU each event costs, beside the same figures for another build of the service.

Run from the repository root::

    .venv/bin/python tests/benchmarks/bench_scaling.py [--database-url URL] [--events N]
        [--baseline-command /path/to/other/.venv/bin/webhook-service]

It prints figures and never asserts; a missed target is printed as MISSED.

Each configuration gets fresh processes and a fresh database: the FreshBooks simulator, the sink
(``sink_app.py``), the service (``webhook-service serve`` with the configuration's arguments), a
tenant connected through ``tenants import`` with its invoice callback verified, a subscription to
the sink, and N invoices seeded. The driver (this process, ``aiohttp``) POSTs FreshBooks
``invoice.update`` webhooks signed with the callback's verifier, one per invoice, 32 in flight.

1. Ingest (``serve --role web``, no worker) against the bare Starlette endpoint (``bare_app.py``)
   under the same generator, closed loop: requests/s, p99, and a check that every acknowledged
   webhook is a committed inbox row (target: >= 0.5x the bare endpoint). On SQLite, the same
   endpoint made durable too (``bare_app.py --durable``: the signature checked, each webhook a
   committed row before its answer, nothing else), the floor under any durable receiver here. Then the same for
   ``serve --web-processes M`` (``--web-processes``, default 2): M web processes sharing the port,
   against a bare endpoint measured again beside it.
2. Whole pipeline, burst then drain: N webhooks as fast as the web process takes them, timed from
   the first POST until the sink has received N deliveries (hydration from the simulator,
   normalization, signing, delivery). Configurations: ``serve`` (one process, role all), ``serve
   --workers 1`` and ``serve --workers 2`` (target: 2 workers >= 1.4x 1 worker), and, with
   ``--baseline-command``, the other build's ``serve``. The CPU seconds of every process (web,
   each worker, simulator, sink, driver) are printed: on a 2-core machine they share two cores,
   and that ceiling is visible in them; the ceiling line says what the cores allow a second worker
   when every process keeps the CPU per event of the 1-worker run.
3. CPU per event: the service's processes' CPU seconds per 1,000 events, from part 2 (target: at
   most half of the baseline build's). Each round is compared with the baseline's run of the same
   round, and the verdict is the median of those ratios (the baseline alone swings by a third from
   run to run); least against least is printed beside it.
4. Workers on a backlog: the web role alone takes N webhooks, then 1 or 2 ``serve --role worker``
   processes drain the inbox, timed from the first delivery to the last. The web process and the
   driver are idle meanwhile, so this is the workers' own scaling (not a target of its own).

Databases: temporary SQLite files by default; ``--database-url postgresql+asyncpg://USER@HOST/DB``
creates (and drops) fresh databases on that server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx
from bench_delivery import (
    Children,
    Databases,
    Stack,
    add_database_argument,
    checked_database_argument,
    connect_tenant,
    describe_ms,
    free_port,
    percentile,
    run_benchmark,
    run_cli,
    seed_invoices,
    service_command,
    service_env,
    sink_count,
    start_sink,
    subscribe_sink,
    verdict,
    wait_for_ok,
    wait_for_port,
)
from bench_inbound import BARE_SCRIPT, Body, invoice_callback, post, signed_bodies
from procstats import cpu_seconds, hwm_mb
from scrape import samples
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from webhook_service.storage.models import InboxEvent
from webhook_service.storage.writer_gate import PUBLISH_EVERY

INGEST_TARGET = 0.5  # web role / bare endpoint
SCALING_TARGET = 1.4  # 2 workers / 1 worker
CPU_TARGET = 0.5  # CPU per event / the baseline build's
PER_TENANT = 16
"""FRESHBOOKS_CONCURRENCY_PER_TENANT for the one tenant every webhook here belongs to: it stands in
for four tenants at the default 4. At 4, a process fetches at most 4 objects at once for the one
tenant, and the pipeline measures the simulator's round trip, not the service."""


@dataclass
class Configuration:
    label: str
    command: list[str]
    serve_args: list[str]


@dataclass
class Run:
    """One configuration's processes, and what the driver needs to reach them."""

    stack: Stack
    service_pid: int
    callback_url: str
    bodies: list[Body]
    verifier: str

    def service_pids(self) -> dict[str, int]:
        """The service's processes by role: itself, or a supervisor's children (web first), each
        named by the ``--role`` on its command line."""
        found = _children_of(self.service_pid)
        if not found:
            return {"service": self.service_pid}
        roles = {pid: _role_of(pid) for pid in found}
        web = [pid for pid in found if roles[pid] == "web"]
        workers = [pid for pid in found if roles[pid] != "web"]
        named = {"web" if len(web) == 1 else f"web-{n}": pid for n, pid in enumerate(web, start=1)}
        return {**named, **{f"worker-{n}": pid for n, pid in enumerate(workers, start=1)}}


@dataclass
class Burst:
    sent: int
    statuses: Counter[str]
    latencies: list[float]
    ingest_s: float
    pipeline_s: float | None
    delivered: int
    cpu: dict[str, float] = field(default_factory=dict)  # process -> CPU seconds over the run
    peak_mb: dict[str, float] = field(default_factory=dict)
    writer_held_s: float | None = None  # SQLite's writer held over the run, all processes (None: not reported)

    @property
    def accepted(self) -> int:
        return sum(n for status, n in self.statuses.items() if status.startswith("200"))

    @property
    def ingest_rate(self) -> float:
        """Webhooks acknowledged per second while they were sent."""
        return self.accepted / self.ingest_s

    @property
    def wall(self) -> float:
        """The seconds its CPU figures are shares of: the whole pipeline's, or the ingest's alone."""
        return self.pipeline_s or self.ingest_s


@dataclass
class Drained:
    """Part 4's run: the deliveries timed (from the first the sink saw), over how long, and the CPU
    of every process over that time."""

    accepted: int
    delivered: int = 0
    timed: int = 0
    seconds: float | None = None
    cpu: dict[str, float] = field(default_factory=dict)


def _children_of(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in sorted(Path(f"/proc/{pid}/task").iterdir()):
            found += [int(p) for p in (task / "children").read_text().split()]
    return found


def _role_of(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    return argv[argv.index(b"--role") + 1].decode() if b"--role" in argv else "all"


@contextlib.asynccontextmanager
async def configured(
    databases: Databases, procs: Children, config: Configuration, name: str, events: int
) -> AsyncIterator[Run]:
    """Simulator, sink and the service as ``config`` says, a tenant connected, ``events`` invoices."""
    sim_port, service_port = free_port(), free_port()
    simulator_url, service_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{service_port}"
    database_url = await databases.create(name)
    env = service_env(database_url, simulator_url, service_port)
    env["BACKFILL_ENABLED"] = "false"  # the sweep would emit what the burst is measured on
    env["FRESHBOOKS_CONCURRENCY_PER_TENANT"] = str(PER_TENANT)
    await run_cli(["migrate"], env, procs.log_dir, command=config.command)  # the build's own migrations
    procs.start(f"simulator-{name}", [*service_command(), "simulator", "--port", str(sim_port), "--seed-invoices", "0"])
    sink, sink_url = start_sink(procs, f"sink-{name}")
    service = procs.start(
        f"service-{name}", [*config.command, "serve", "--port", str(service_port), *config.serve_args], env=env
    )
    await wait_for_port(sim_port, procs, "simulator")
    await wait_for_port(int(sink_url.rsplit(":", 1)[1]), procs, "sink")
    await wait_for_ok(f"{service_url}/readyz", procs, "service")
    stack = Stack(simulator_url, sink_url, service_url, database_url, env, procs, config.command)
    async with httpx.AsyncClient(timeout=60.0) as control:
        await connect_tenant(stack, control)
        await subscribe_sink(stack)
        ids = await seed_invoices(control, simulator_url, events)
        uri, verifier = await invoice_callback(control, simulator_url)
    try:
        yield Run(stack, service.popen.pid, uri, signed_bodies(ids, verifier), verifier)
    finally:
        procs.stop_all()


async def burst(run: Run, concurrency: int, *, drain_timeout: float, wait_for_delivery: bool = True) -> Burst:
    """Every body once, ``concurrency`` in flight; then (``wait_for_delivery``) until the sink has one
    delivery per accepted webhook."""
    pids = run.service_pids()
    others = {
        "simulator": _pid_named(run, "simulator"),
        "sink": _pid_named(run, "sink"),
    }
    before = {name: cpu_seconds(pid) or 0.0 for name, pid in {**pids, **others}.items()}
    held_before = await writer_held(run.stack.service_url)
    database_before = database_cpu()
    driver_before = time.process_time()
    pending = iter(run.bodies)
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    loop = asyncio.get_running_loop()

    async def lane(session: aiohttp.ClientSession) -> None:
        for body in pending:
            started = loop.time()
            status = await post(session, run.callback_url, body)
            latencies.append(loop.time() - started)
            statuses[status] += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*(lane(session) for _ in range(concurrency)))
    ingest_s = time.perf_counter() - started
    result = Burst(len(run.bodies), statuses, latencies, ingest_s, None, 0)
    if wait_for_delivery:
        async with httpx.AsyncClient(timeout=10.0) as control:
            while True:
                run.stack.procs.ensure_alive()
                result.delivered = await sink_count(control, run.stack.sink_url)
                if result.delivered >= result.accepted:
                    result.pipeline_s = time.perf_counter() - started
                    break
                if time.perf_counter() - started > drain_timeout:
                    break
                await asyncio.sleep(0.05)
    result.cpu = {name: (cpu_seconds(pid) or math.nan) - before[name] for name, pid in {**pids, **others}.items()}
    result.cpu["driver"] = time.process_time() - driver_before
    if database_before is not None:
        result.cpu["postgres"] = (database_cpu() or 0.0) - database_before
    result.peak_mb = {name: hwm_mb(pid) or math.nan for name, pid in pids.items()}
    if held_before is not None:
        await asyncio.sleep(PUBLISH_EVERY + 0.5)  # each process reports its holds a second after they begin
    held_after = await writer_held(run.stack.service_url)
    if held_before is not None and held_after is not None:
        result.writer_held_s = held_after - held_before
    return result


async def writer_held(service_url: str) -> float | None:
    """Seconds the service's processes have held SQLite's one writer, all together (its web
    process's ``/metrics``, each process's holds reported ``PUBLISH_EVERY`` after they begin);
    None from a build that does not report it."""
    async with httpx.AsyncClient(timeout=10.0) as client:
        metrics = (await client.get(f"{service_url}/metrics")).text
    held = samples(metrics, "webhook_service_sqlite_writer_held_seconds_total")
    return held[0].value if held else None


def database_cpu() -> float | None:
    """CPU seconds of every PostgreSQL server process on this machine (None when there is none):
    the server shares the cores with the service, and its work is the service's too."""
    total, found = 0.0, False
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            name = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if name in ("postgres", "postmaster"):
            total += cpu_seconds(int(entry.name)) or 0.0
            found = True
    return total if found else None


def _pid_named(run: Run, prefix: str) -> int:
    for child in run.stack.procs.started:
        if child.name.startswith(prefix):
            return child.popen.pid
    raise RuntimeError(f"no {prefix} process")


async def committed_inbox_rows(database_url: str) -> int:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            return int((await connection.execute(select(func.count()).select_from(InboxEvent))).scalar_one())
    finally:
        await engine.dispose()


def load() -> str:
    return f"load average {os.getloadavg()[0]:.2f}"


def service_cpu(result: Burst) -> float:
    """The service's processes only (PostgreSQL's work is printed beside, not counted here)."""
    return sum(v for k, v in result.cpu.items() if k not in ("simulator", "sink", "driver", "postgres"))


def ceiling(result: Burst, cores: int) -> str:
    """What the machine allows a second worker: every process (the service's, the simulator, the
    sink, the driver, PostgreSQL) kept its CPU per event, the cores could carry at most this much."""
    used = sum(result.cpu.values()) / result.wall
    return (
        f"ceiling: the 1-worker run kept {used:.2f} of {cores} cores busy (all processes); at the same CPU per "
        f"event, {cores} cores carry at most {min(cores / used, 2.0):.2f}x its rate"
    )


def describe_cpu(cpu: dict[str, float], wall: float) -> str:
    return ", ".join(f"{name} {seconds:.1f} s ({seconds / wall:.0%})" for name, seconds in cpu.items())


# -- 1. ingest --------------------------------------------------------------------------------
async def bare_burst(bodies: list[Body], endpoint: tuple[str, int], concurrency: int) -> Burst:
    """The bodies POSTed to a baseline endpoint (its URL and process id, :func:`start_bare`)."""
    url, pid = endpoint
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    pending = iter(bodies)
    loop = asyncio.get_running_loop()
    before, driver_before = cpu_seconds(pid) or 0.0, time.process_time()

    async def lane(session: aiohttp.ClientSession) -> None:
        for body in pending:
            started = loop.time()
            statuses[await post(session, url, body)] += 1
            latencies.append(loop.time() - started)

    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(*(lane(session) for _ in range(concurrency)))
    result = Burst(len(bodies), statuses, latencies, time.perf_counter() - started, None, 0)
    result.cpu = {"endpoint": (cpu_seconds(pid) or math.nan) - before, "driver": time.process_time() - driver_before}
    return result


async def start_bare(procs: Children, name: str, endpoint_key: str, args: Sequence[str] = ()) -> tuple[str, int]:
    """A baseline endpoint (``bare_app.py``) with ``args``: its webhook URL and process id."""
    port = free_port()
    bare = procs.start(name, [sys.executable, str(BARE_SCRIPT), "--port", str(port), *args])
    await wait_for_port(port, procs, f"{name} endpoint")
    return f"http://127.0.0.1:{port}/webhooks/freshbooks/{endpoint_key}", bare.popen.pid


async def run_ingest(args: argparse.Namespace, databases: Databases, procs: Children) -> None:
    configs = [Configuration("web role", service_command(), ["--role", "web"])]
    if args.web_processes > 1:
        configs.append(
            Configuration(
                f"{args.web_processes} web processes", service_command(), ["--web-processes", str(args.web_processes)]
            )
        )
    shown = " and ".join(f"`serve {' '.join(c.serve_args)}`" for c in configs)
    print(
        f"\n== 1. Ingest only: {shown} (no worker) vs a bare Starlette endpoint, {args.ingest_events} "
        f"webhooks each, {args.concurrency} in flight (target >= {INGEST_TARGET:g}x)"
    )
    for index, config in enumerate(configs):
        async with configured(databases, procs, config, f"ingest{index}", args.ingest_events) as run:
            key = run.callback_url.rsplit("/", 1)[1]
            baseline = await bare_burst(run.bodies, await start_bare(procs, "bare", key), args.concurrency)
            floor = None
            if databases.backend == "sqlite":
                floor_db = procs.log_dir / f"floor{index}.db"
                durable = ["--durable", str(floor_db), "--verifier", run.verifier]
                floor = await bare_burst(run.bodies, await start_bare(procs, "durable", key, durable), args.concurrency)
            service = await burst(run, args.concurrency, drain_timeout=0, wait_for_delivery=False)
            rows = await committed_inbox_rows(run.stack.database_url)
            rate, bare_rate = service.ingest_rate, baseline.ingest_rate
            shown = [("bare Starlette", baseline), ("durable bare", floor), (config.label, service)]
            for label, result in shown:
                if result is not None:
                    print(
                        f"   {label:<16} {result.ingest_rate:7.0f} req/s   "
                        f"{describe_ms(result.latencies)}   "
                        f"CPU: {describe_cpu(result.cpu, result.wall)}; {load()}; answers {dict(result.statuses)}"
                    )
            p99s = [percentile(sorted(r.latencies), 99) * 1000 for r in (service, baseline)]
            print(
                f"   {config.label} / bare: throughput {rate / bare_rate:.2f}x -> "
                f"{verdict(rate / bare_rate >= INGEST_TARGET)}; p99 {p99s[0]:.1f} ms vs {p99s[1]:.1f} ms"
            )
            if floor is not None:
                floor_rate = floor.ingest_rate
                print(
                    f"   durable bare / bare: {floor_rate / bare_rate:.2f}x (the floor: a signature check and a "
                    f"group commit to SQLite, nothing else); {config.label} / durable bare: {rate / floor_rate:.2f}x"
                )
            first, rest = (
                f"{percentile(sorted(r.latencies[:1000]), 99) * 1000:.1f} / "
                f"{percentile(sorted(r.latencies[1000:]), 99) * 1000:.1f} ms"
                for r in (service, baseline)
            )
            print(f"   p99 of the first 1,000 answers / of the rest: {config.label} {first}, bare {rest}")
            committed = "every one" if rows == service.accepted else f"MISSED: {rows} rows for {service.accepted}"
            print(f"   acknowledged webhooks committed to the inbox: {rows} of {service.accepted} ({committed})")
            backlog = samples(httpx.get(f"{run.stack.service_url}/metrics").text, "webhook_service_backlog")
            queued = [sample.value for sample in backlog if sample.labels.get("queue") == "inbox"]
            shown = f'webhook_service_backlog{{queue="inbox"}} {queued[0]:g}' if queued else "not found"
            print(f"   backlog visible in /metrics afterwards: {shown}")


# -- 2 and 3. the pipeline --------------------------------------------------------------------
async def run_pipeline(args: argparse.Namespace, databases: Databases, procs: Children) -> None:
    known = {
        "one": Configuration("serve (one process)", service_command(), []),
        "w1": Configuration("serve --workers 1", service_command(), ["--workers", "1"]),
        "w2": Configuration("serve --workers 2", service_command(), ["--workers", "2"]),
    }
    configs = [known[name] for name in args.configs]
    if args.baseline_command:
        configs.insert(0, Configuration("BASELINE build: serve", args.baseline_command.split(), []))
    print(
        f"\n== 2. Whole pipeline, burst then drain: {args.events} webhooks, {args.concurrency} in flight, timed "
        f"until the sink has every delivery ({args.rounds} round(s) per configuration, alternating); one tenant, "
        f"FRESHBOOKS_CONCURRENCY_PER_TENANT={PER_TENANT} (four tenants' worth at the default 4)"
    )
    results: dict[str, list[Burst]] = {c.label: [] for c in configs}
    for round_number in range(1, args.rounds + 1):
        for index, config in enumerate(configs):
            name = f"pipeline{round_number}-{index}"
            async with configured(databases, procs, config, name, args.events) as run:
                result = await burst(run, args.concurrency, drain_timeout=args.drain_timeout)
            results[config.label].append(result)
            if result.pipeline_s is None:
                print(f"   {config.label:<24} ! only {result.delivered} of {result.accepted} delivered in time")
                continue
            print(
                f"   {config.label:<24} {result.accepted / result.pipeline_s:6.0f} events/s "
                f"(ingest {result.ingest_rate:5.0f}/s), "
                f"{service_cpu(result) / result.accepted * 1000:5.2f} service CPU-s per 1,000 events; {load()}"
            )
            print(f"   {'':<24} CPU: {describe_cpu(result.cpu, result.wall)}")
            print(f"   {'':<24} peak RSS: " + ", ".join(f"{k} {v:.0f} MB" for k, v in result.peak_mb.items()))
            if result.writer_held_s:  # SQLite: the one writer every process takes turns at
                print(f"   {'':<24} SQLite's writer held {result.writer_held_s / result.wall:.0%} of the run")

    def best(label: str, key) -> float:
        values = [key(r) for r in results.get(label, []) if r.pipeline_s]
        return max(values) if values else math.nan

    def rate(r: Burst) -> float:
        return r.accepted / r.pipeline_s if r.pipeline_s else math.nan

    def cpu_per_1000(r: Burst) -> float:
        return -service_cpu(r) / r.accepted * 1000  # negated: best() takes the max, the least CPU wins

    one, two = best("serve --workers 1", rate), best("serve --workers 2", rate)
    print(
        f"   2 workers / 1 worker: {two / one:.2f}x (best of each) -> {verdict(two / one >= SCALING_TARGET)} "
        f"(target >= {SCALING_TARGET:g}x)"
    )
    single = [r for r in results.get("serve --workers 1", []) if r.pipeline_s and rate(r) == one]
    if single:
        print(f"   {ceiling(single[0], os.cpu_count() or 1)}")
        if single[0].writer_held_s:
            share = single[0].writer_held_s / single[0].wall
            print(
                f"   SQLite's writer: the 1-worker run held it {share:.0%} of its time; at the same hold per event, "
                f"any number of processes carry at most {1 / share:.2f}x its rate"
            )
    print("\n== 3. CPU per event (service processes, CPU-seconds per 1,000 events; least of the rounds)")
    for label in results:
        print(f"   {label:<24} {-best(label, cpu_per_1000):5.2f}")
    if args.baseline_command:
        # The baseline's own CPU per event swings by a third from run to run: each round is compared
        # with the baseline of the same round (run just before it), and the verdict is their median.
        baseline = results[configs[0].label]
        least = -best(configs[0].label, cpu_per_1000)
        for label in results:
            if label == configs[0].label:
                continue
            paired = [
                cpu_per_1000(r) / cpu_per_1000(b)
                for r, b in zip(results[label], baseline, strict=True)
                if r.pipeline_s and b.pipeline_s
            ]
            middle = statistics.median(paired) if paired else math.nan
            print(
                f"   {label:<24} {middle:.2f}x the baseline build (median of the rounds: "
                f"{', '.join(f'{x:.2f}' for x in paired)}; least against least "
                f"{-best(label, cpu_per_1000) / least:.2f}x) -> {verdict(middle <= CPU_TARGET)}"
            )


# -- 4. workers on a backlog ------------------------------------------------------------------
async def drain(run: Run, workers: int, *, concurrency: int, drain_timeout: float) -> Drained:
    """The web role alone takes every webhook; then ``workers`` worker processes start and drain the
    inbox. Timed, and the CPU counted, from the first delivery the sink sees (the workers' start-up
    is left out) to the last."""
    ingested = await burst(run, concurrency, drain_timeout=0, wait_for_delivery=False)
    started = [
        run.stack.procs.start(
            f"worker-{n}", [*run.stack.command, "serve", "--role", "worker", "--port", str(free_port())], run.stack.env
        )
        for n in range(1, workers + 1)
    ]
    pids = {f"worker-{n}": child.popen.pid for n, child in enumerate(started, 1)}
    pids.update(simulator=_pid_named(run, "simulator"), sink=_pid_named(run, "sink"))

    def cpu_now() -> dict[str, float]:
        now = {name: cpu_seconds(pid) or math.nan for name, pid in pids.items()}
        database = database_cpu()
        return now if database is None else {**now, "postgres": database}

    result = Drained(ingested.accepted)
    first: tuple[float, int, dict[str, float]] | None = None
    began = time.perf_counter()
    async with httpx.AsyncClient(timeout=10.0) as control:
        while time.perf_counter() - began < drain_timeout:
            run.stack.procs.ensure_alive()
            result.delivered = await sink_count(control, run.stack.sink_url)
            if first is None and result.delivered:
                first = (time.perf_counter(), result.delivered, cpu_now())
            if first is not None and result.delivered >= result.accepted:
                result.seconds = time.perf_counter() - first[0]
                result.timed = result.accepted - first[1]
                result.cpu = {name: seconds - first[2][name] for name, seconds in cpu_now().items()}
                break
            await asyncio.sleep(0.02)
    return result


async def run_drain(args: argparse.Namespace, databases: Databases, procs: Children) -> None:
    print(
        f"\n== 4. Workers on a backlog: the web role takes {args.events} webhooks with no worker running, then 1 or "
        f"2 worker processes (`serve --role worker`) drain the inbox; timed from the first delivery to the last "
        f"({args.rounds} round(s), alternating). The web process and the driver are idle meanwhile."
    )
    rates: dict[int, list[float]] = {1: [], 2: []}
    for round_number in range(1, args.rounds + 1):
        for workers in (1, 2):
            config = Configuration("web role", service_command(), ["--role", "web"])
            async with configured(databases, procs, config, f"drain{round_number}-{workers}", args.events) as run:
                result = await drain(run, workers, concurrency=args.concurrency, drain_timeout=args.drain_timeout)
            if result.seconds is None:
                print(f"   {workers} worker(s): ! only {result.delivered} of {result.accepted} delivered in time")
                continue
            rates[workers].append(result.timed / result.seconds)
            print(
                f"   {workers} worker(s)  {rates[workers][-1]:6.0f} deliveries/s over {result.timed}; {load()}\n"
                f"   {'':<12} CPU: {describe_cpu(result.cpu, result.seconds)}"
            )
    if rates[1] and rates[2]:
        print(f"   2 workers / 1 worker on a backlog: {max(rates[2]) / max(rates[1]):.2f}x (best of each)")


async def run_all(args: argparse.Namespace, databases: Databases, procs: Children) -> None:
    if args.only in (None, "ingest"):
        await run_ingest(args, databases, procs)
    if args.only in (None, "pipeline"):
        await run_pipeline(args, databases, procs)
    if args.only in (None, "drain"):
        await run_drain(args, databases, procs)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run modes: ingest, worker scaling, CPU per event (prints figures).")
    add_database_argument(parser)
    parser.add_argument("--events", type=int, default=4000, help="webhooks per pipeline burst (4000)")
    parser.add_argument("--ingest-events", type=int, default=8000, help="webhooks in the ingest phase (8000)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (32)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the pipeline configurations (1)")
    parser.add_argument("--drain-timeout", type=float, default=300.0, help="seconds to wait for the sink (300)")
    parser.add_argument(
        "--baseline-command",
        help="another build's `webhook-service` (e.g. a checkout of the previous commit in its own venv): its "
        "`serve` is measured in part 2 as the baseline of part 3",
    )
    parser.add_argument(
        "--web-processes",
        type=int,
        default=2,
        help="part 1 measures `serve --web-processes M` (the port shared by M web processes) too, when M > 1 (2)",
    )
    parser.add_argument("--only", choices=("ingest", "pipeline", "drain"), help="run one part only")
    parser.add_argument(
        "--configs", default="one,w1,w2", help="pipeline configurations: one (serve), w1, w2 (--workers 1, 2)"
    )
    args = parser.parse_args(argv)
    args.configs = [name.strip() for name in args.configs.split(",") if name.strip()]
    if not set(args.configs) <= {"one", "w1", "w2"}:
        parser.error("--configs takes one, w1 and w2, separated by commas")
    return checked_database_argument(parser, args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_benchmark(parse_args(argv), "bench-scaling-", run_all)


if __name__ == "__main__":
    sys.exit(main())
