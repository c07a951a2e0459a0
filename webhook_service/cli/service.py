"""Running and keeping the service: ``serve``, ``migrate``, the keys, ``purge``, and the trial tools
(``simulator``, ``demo``: the sandbox is imported only inside their handlers)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from webhook_service.cli.common import EXIT_FAILED, EXIT_OK, UsageError, check_database, open_runtime, program
from webhook_service.cli.output import print_json, print_rows
from webhook_service.cli.spec import JSON, Command, arg
from webhook_service.config import Settings
from webhook_service.core.crypto import generate_key
from webhook_service.core.logs import cache_loggers

if TYPE_CHECKING:
    from starlette.applications import Starlette


SWITCH_INTERVAL = 0.001
YOUNG_GENERATION_THRESHOLD = 10_000
"""Containers made beyond those freed before the young generation is collected (Python's default: 700)."""


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import contextlib
    import socket
    import sys

    import uvicorn

    from webhook_service.app import DRAIN_SECONDS, create_app
    from webhook_service.web.server import build_config

    # A thread that finished waiting (a commit's fsync, a lock) needs the GIL back to hand its result
    # over; by default the loop's thread keeps it for up to 5 ms, and on SQLite the next writer of
    # every other process waits that long too. 1 ms keeps a busy loop's switches cheap.
    sys.setswitchinterval(SWITCH_INTERVAL)
    cache_loggers()
    role = args.role or settings.serve_role
    workers = args.workers if args.workers is not None else settings.serve_workers
    web_processes = args.web_processes if args.web_processes is not None else settings.serve_web_processes
    host = args.host or settings.host
    port = args.port if args.port is not None else settings.port
    supervised = workers > 0 or web_processes > 1
    if supervised and role != "all":
        raise UsageError(
            "--workers (SERVE_WORKERS) and --web-processes (SERVE_WEB_PROCESSES) start the web and worker "
            "processes themselves: leave --role (SERVE_ROLE) at all"
        )
    if workers < 0:
        raise UsageError("--workers takes a number of worker processes, 0 or more")
    if web_processes < 1:
        raise UsageError("--web-processes takes a number of web processes, 1 or more")
    asyncio.run(check_database(settings))  # a bad key or database fails here, before the port is bound
    if supervised:
        from webhook_service.cli import supervisor

        if settings.should_migrate_on_start:
            asyncio.run(_migrate_quietly(settings))
        budget = settings.shutdown_grace_seconds * 2 + DRAIN_SECONDS + supervisor.STOP_MARGIN
        return supervisor.run(settings, host=host, port=port, web=web_processes, workers=workers, stop_budget=budget)
    app = create_app(settings, role=role)
    freeze_heap()
    if args.no_listen:
        # uvloop, as uvicorn picks for the web role: a worker's loop is a sixth of its CPU
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(_run_headless(app))
        return EXIT_OK
    server = uvicorn.Server(build_config(settings, app, host=host, port=port))
    # A web process of `serve --workers`/`--web-processes` serves the socket its supervisor bound
    sockets = None if args.listen_fd is None else [socket.socket(fileno=args.listen_fd)]
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises Ctrl-C after shutting down
        server.run(sockets=sockets)
    return EXIT_OK if server.started else EXIT_FAILED


def freeze_heap() -> None:
    """Leave what importing and building the app made out of every garbage collection from now on,
    and collect the young generation only when garbage has really piled up.

    The objects made at start (SQLAlchemy's mappers and compiled statements, pydantic's validators,
    the event catalogue: hundreds of thousands) live as long as the process, yet each full
    collection walked them all: a tenth of a busy process's CPU, in pauses that showed as the web
    role's p99. And at the default threshold (700 more containers made than freed) the young
    generation was collected 1,600 times in an 8,000-webhook burst through ``serve``, and the
    older ones 158 times after it, each walking the objects of the requests in flight, which
    reference counting frees a moment later anyway: 0.38 s of the process's 9.7 s of CPU. At
    :data:`YOUNG_GENERATION_THRESHOLD` a burst sees a few collections, with the same peak memory
    (``tests/benchmarks/bench_scaling.py``). Cycles are still collected, later.
    """
    import gc

    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, middle, old)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop where it is installed (``uvicorn[standard]`` brings it, except on Windows)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _run_headless(app: Starlette) -> None:
    """The app's lifespan (a worker's loops) without an HTTP listener, until SIGTERM or SIGINT:
    what ``serve --workers`` runs its workers as, so they need no port each."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with app.router.lifespan_context(app):
        await stop.wait()


async def _migrate_quietly(settings: Settings) -> None:
    async with open_runtime(settings, migrate_schema=True):
        pass


async def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    await _migrate_quietly(settings)
    print("database is at the latest migration")
    return EXIT_OK


def _simulator(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.sandbox.simulator.server import run

    run(
        args.host,
        args.port,
        seed_invoices=args.seed_invoices,
        seed_clients=args.seed_clients,
        delivery_senders=args.delivery_senders,
    )
    return EXIT_OK


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.sandbox import demo

    return demo.run(demo.Options(keep_running=args.keep_running, as_json=args.json, program=program()))


def _generate_secret_key(settings: Settings, args: argparse.Namespace) -> int:
    print(generate_key())
    return EXIT_OK


async def _rotate_secret_key(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.storage.rekey import reencrypt_all

    async with open_runtime(settings) as runtime:
        count = await reencrypt_all(runtime.db, runtime.box)
    print(f"re-encrypted {count} secrets under the first SECRET_KEY key")
    return EXIT_OK


async def _purge(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.maintenance.retention import policy
    from webhook_service.storage import retention

    async with open_runtime(settings) as runtime:
        report = await retention.purge(runtime.db, policy(settings), dry_run=args.dry_run)
    if args.json:
        print_json(report.as_dict())
        return EXIT_OK
    expiring = {"pending_connections", "leases"}  # gone once expired; the rest after RETENTION_DAYS
    rows = [
        {"table": table, "rows": count, "before": (report.now if table in expiring else report.cutoff).isoformat()}
        for table, count in report.deleted.items()
    ]
    rows.append(
        {
            "table": "delivery_attempts.response_body",
            "rows": report.response_bodies_cleared,
            "before": report.response_body_cutoff.isoformat(),
        }
    )
    print_rows(rows, False, ("table", "rows", "before"))
    verb = ("would delete", "clear") if args.dry_run else ("deleted", "cleared")
    print(f"{verb[0]} {report.total} rows and {verb[1]} {report.response_bodies_cleared} response bodies")
    if report.sqlite_pages_freed:
        print(f"gave {report.sqlite_pages_freed} free pages back to the file system")
    return EXIT_OK


SERVE = (
    "Run the service. --role web answers webhooks (committing each to the inbox), the admin API and OAuth; "
    "--role worker processes the inbox, delivers, and holds the periodic duties (callback sync, token refresh, "
    "backfill sweeps, retention: each in one worker at a time), answering only /healthz, /readyz and /metrics; "
    "--role all (the default) is both in one process. --workers N runs one web process and N workers on this "
    "machine, on SQLite as on PostgreSQL; --web-processes M runs M web processes on the one port. On SQLite the "
    "schema is migrated on start (AUTO_MIGRATE)."
)
PURGE = (
    "Delete what the service keeps no longer: succeeded and dead deliveries completed more than RETENTION_DAYS ago "
    "with their attempts, events nothing holds any more, settled inbox events, superseded ledger rows, expired "
    "pending connections and leases; clear response bodies older than RETENTION_RESPONSE_BODY_DAYS. Nothing pending "
    "or retrying is touched. In batches of RETENTION_BATCH_SIZE rows, beside a running service."
)
DEMO = (
    "Start the FreshBooks simulator, a local subscriber and the service (temporary SQLite), connect a tenant, make "
    "changes and show the normalized, signed events arriving, then a dropped webhook recovered by the backfill. "
    "Everything is removed at the end."
)

COMMANDS = (
    Command(
        "serve",
        _serve,
        "run the service (web, worker, or both)",
        SERVE,
        (
            arg("--host", help="bind address (default: HOST, 127.0.0.1)"),
            arg("--port", type=int, help="port (default: PORT, 8000)"),
            arg(
                "--role",
                choices=("all", "web", "worker"),
                help="what this process runs (default: SERVE_ROLE, all): web takes webhooks, the admin API and "
                "OAuth; worker processes the inbox, delivers and runs the periodic duties",
            ),
            arg(
                "--workers",
                type=int,
                metavar="N",
                help="start one web process and N worker processes, and stop them together (default: SERVE_WORKERS, 0)",
            ),
            arg(
                "--web-processes",
                type=int,
                metavar="M",
                help="M web processes sharing the port, beside the --workers (default: SERVE_WEB_PROCESSES, 1)",
            ),
            arg("--no-listen", action="store_true", help=argparse.SUPPRESS),
            arg("--listen-fd", type=int, help=argparse.SUPPRESS),
        ),
    ),
    Command("migrate", _migrate, "apply database migrations", "Apply every pending migration to DATABASE_URL."),
    Command(
        "simulator",
        _simulator,
        "run the FreshBooks simulator (for trials and tests)",
        "Serve a FreshBooks stand-in: OAuth, users/me, accounting and projects endpoints, with seeded data.",
        (
            arg("--host", default="127.0.0.1"),
            arg("--port", type=int, default=8100),
            arg("--seed-invoices", type=int, default=25, help="invoices to seed in account ABC123"),
            arg("--seed-clients", type=int, default=10, help="clients to seed in account ABC123"),
            arg(
                "--delivery-senders",
                type=int,
                default=1,
                help="webhook deliveries posted at once (1 keeps FIFO order; more for load tests)",
            ),
        ),
    ),
    Command(
        "demo",
        _demo,
        "see the whole pipeline run locally in a few seconds",
        DEMO,
        (
            arg(
                "--keep-running",
                action="store_true",
                help="afterwards, leave everything up (URLs, admin token) until Ctrl-C",
            ),
            arg("--json", action="store_true", help="one JSON object per line instead of text"),
        ),
    ),
    Command(
        "generate-secret-key", _generate_secret_key, "print a new SECRET_KEY", "Print a new Fernet key for SECRET_KEY."
    ),
    Command(
        "rotate-secret-key",
        _rotate_secret_key,
        "re-encrypt every stored secret under the first SECRET_KEY key",
        "Key rotation: set SECRET_KEY=NEW,OLD, run this, then drop OLD from SECRET_KEY.",
    ),
)

PURGE_COMMAND = Command(
    "purge",
    _purge,
    "delete what is past its retention (RETENTION_DAYS), now",
    PURGE,
    (arg("--dry-run", action="store_true", help="count what would go; change nothing"), JSON),
)
