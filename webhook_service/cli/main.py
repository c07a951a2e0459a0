"""The ``webhook-service`` command line: thin over the same functions the HTTP routes use."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from webhook_service import __version__
from webhook_service.config import Settings, get_settings
from webhook_service.core.crypto import SecretKeyError, generate_key
from webhook_service.core.logs import configure_logging
from webhook_service.freshbooks.errors import FreshBooksError
from webhook_service.storage.models import Tenant
from webhook_service.web.views import callback_view, tenant_view

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CommandError(Exception):
    """A failure to report on one line, without a traceback."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return EXIT_USAGE
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    try:
        return int(args.handler(settings, args) or EXIT_OK)
    except (CommandError, SecretKeyError, FreshBooksError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="webhook-service",
        description="Receives FreshBooks webhooks per connected business (tenant), verifies and "
        "normalizes them, and forwards them to your services.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the HTTP service",
        description=("Run the HTTP service. On SQLite the schema is migrated on start (AUTO_MIGRATE)."),
    )
    serve.add_argument("--host", help="bind address (default: HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: PORT, 8000)")
    serve.set_defaults(handler=_serve)

    migrate = commands.add_parser(
        "migrate", help="apply database migrations", description="Apply every pending migration to DATABASE_URL."
    )
    migrate.set_defaults(handler=_run_async(_migrate))

    sim = commands.add_parser(
        "simulator",
        help="run the FreshBooks simulator (for trials and tests)",
        description="Serve a FreshBooks stand-in: OAuth, users/me, accounting and "
        "projects endpoints, with seeded data.",
    )
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8100)
    sim.add_argument("--seed-invoices", type=int, default=25, help="invoices to seed in account ABC123")
    sim.add_argument("--seed-clients", type=int, default=10, help="clients to seed in account ABC123")
    sim.add_argument(
        "--delivery-senders",
        type=int,
        default=1,
        help="webhook deliveries posted at once (1 keeps FIFO order; more for load tests)",
    )
    sim.set_defaults(handler=_simulator)

    demo = commands.add_parser(
        "demo",
        help="see the whole pipeline run locally in a few seconds",
        description="Start the FreshBooks simulator, a local subscriber and the service (temporary SQLite), "
        "connect a tenant, make changes and show the normalized, signed events arriving, then a dropped "
        "webhook recovered by the backfill. Everything is removed at the end.",
    )
    demo.add_argument(
        "--keep-running", action="store_true", help="afterwards, leave everything up (URLs, admin token) until Ctrl-C"
    )
    demo.add_argument("--json", action="store_true", help="one JSON object per line instead of text")
    demo.set_defaults(handler=_demo)

    keygen = commands.add_parser(
        "generate-secret-key", help="print a new SECRET_KEY", description="Print a new Fernet key for SECRET_KEY."
    )
    keygen.set_defaults(handler=lambda settings, args: print(generate_key()))

    rekey = commands.add_parser(
        "rotate-secret-key",
        help="re-encrypt every stored secret under the first SECRET_KEY key",
        description="Key rotation: set SECRET_KEY=NEW,OLD, run this, then drop OLD from SECRET_KEY.",
    )
    rekey.set_defaults(handler=_run_async(_rotate_secret_key))

    callback_commands = _command_group(
        commands,
        "callbacks",
        help="FreshBooks webhook callbacks per tenant",
        description="Reconcile and list callbacks.",
        title="callback commands",
    )
    sync = callback_commands.add_parser(
        "sync",
        help="reconcile callbacks with FreshBooks",
        description="Create missing callbacks, ask FreshBooks to resend pending verifications, replace "
        "dropped or disabled ones, delete the service's stale ones; leaves other callbacks alone.",
    )
    target = sync.add_mutually_exclusive_group(required=True)
    target.add_argument("--tenant", metavar="ID", help="one tenant")
    target.add_argument("--all", action="store_true", help="every active tenant")
    sync.add_argument("--json", action="store_true", help="print JSON")
    sync.set_defaults(handler=_run_async(_callbacks_sync))
    cb_list = callback_commands.add_parser(
        "list", help="list callbacks and their state", description="Callbacks with state and last event time."
    )
    cb_list.add_argument("--tenant", metavar="ID", help="only this tenant")
    cb_list.add_argument("--all-history", action="store_true", help="include retired callbacks")
    cb_list.add_argument("--json", action="store_true", help="print JSON")
    cb_list.set_defaults(handler=_run_async(_callbacks_list))

    _add_backfill_command(commands)
    _add_event_commands(commands)
    _add_subscription_commands(commands)
    _add_delivery_commands(commands)
    _add_purge_command(commands)

    tenant_commands = _command_group(
        commands,
        "tenants",
        help="connected FreshBooks businesses",
        description="Connect, list, inspect and disconnect tenants.",
        title="tenant commands",
    )

    imp = tenant_commands.add_parser(
        "import",
        help="connect a business from an existing refresh token",
        description="Spend REFRESH_TOKEN at once (FreshBooks rotates it), store the new pair before "
        "anything else, resolve the identity and create or reconnect the tenant.",
    )
    source = imp.add_mutually_exclusive_group(required=True)
    source.add_argument("--refresh-token", help="a FreshBooks refresh token (single-use)")
    source.add_argument(
        "--resume", metavar="PENDING_ID", help="finish an import that stopped to ask which business to connect"
    )
    imp.add_argument("--business-id", type=int, help="business to connect when the login has several")
    imp.add_argument("--json", action="store_true", help="print JSON")
    imp.set_defaults(handler=_run_async(_tenants_import))

    lst = tenant_commands.add_parser("list", help="list tenants", description="List tenants and their status.")
    lst.add_argument("--json", action="store_true", help="print JSON")
    lst.set_defaults(handler=_run_async(_tenants_list))

    show = tenant_commands.add_parser("show", help="show one tenant", description="Show one tenant.")
    show.add_argument("tenant_id")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=_run_async(_tenants_show))

    disc = tenant_commands.add_parser(
        "disconnect",
        help="revoke a tenant's grant and stop using it",
        description="Revoke the token at FreshBooks, forget it, and mark the tenant disconnected.",
    )
    disc.add_argument("tenant_id")
    disc.add_argument("--json", action="store_true", help="print JSON")
    disc.set_defaults(handler=_run_async(_tenants_disconnect))
    return parser


def _command_group(commands: Any, name: str, *, help: str, description: str, title: str) -> Any:
    """A command with subcommands; alone, it prints its help and exits 2."""
    group = commands.add_parser(name, help=help, description=description)
    group.set_defaults(handler=lambda settings, args: _usage(group))
    return group.add_subparsers(title=title, metavar="COMMAND")


def _add_event_commands(commands: Any) -> None:
    ev_commands = _command_group(
        commands,
        "events",
        help="normalized events",
        description="List and show normalized events.",
        title="event commands",
    )
    lst = ev_commands.add_parser("list", help="events, newest first", description="List normalized events.")
    lst.add_argument("--tenant", metavar="ID")
    lst.add_argument("--type", metavar="TYPE", help="e.g. invoice.updated")
    lst.add_argument("--limit", type=int, default=100)
    lst.add_argument("--json", action="store_true", help="print JSON")
    lst.set_defaults(handler=_run_async(_events_list))
    show = ev_commands.add_parser("show", help="one event with its payload", description="One event and its payload.")
    show.add_argument("event_id")
    show.set_defaults(handler=_run_async(_events_show))

    inbox_commands = _command_group(
        commands,
        "inbox",
        help="FreshBooks deliveries as received",
        description="The durable inbox of verified FreshBooks deliveries.",
        title="inbox commands",
    )
    ilist = inbox_commands.add_parser("list", help="inbox events, newest first", description="List inbox events.")
    ilist.add_argument("--tenant", metavar="ID")
    ilist.add_argument("--status", choices=["pending", "duplicate", "processed", "failed"])
    ilist.add_argument("--limit", type=int, default=100)
    ilist.add_argument("--json", action="store_true", help="print JSON")
    ilist.set_defaults(handler=_run_async(_inbox_list))


async def _events_list(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.runtime import Runtime
    from webhook_service.storage import events as event_store
    from webhook_service.web.views import event_view

    async with Runtime.open(settings) as runtime, runtime.db.sessions() as session:
        rows = await event_store.list_events(
            session, tenant_id=args.tenant, event_type=args.type, limit=max(1, min(args.limit, 10_000))
        )
    _print_rows(
        [event_view(e, with_payload=False) for e in rows],
        args.json,
        ("id", "type", "tenant_id", "object_id", "origin", "occurred_at", "created_at"),
    )
    return EXIT_OK


async def _events_show(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.runtime import Runtime
    from webhook_service.storage.models import Event
    from webhook_service.web.views import event_view

    async with Runtime.open(settings) as runtime, runtime.db.sessions() as session:
        event = await session.get(Event, args.event_id)
    if event is None:
        raise CommandError(f"no event {args.event_id}")
    _print_json(event_view(event))
    return EXIT_OK


async def _inbox_list(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.runtime import Runtime
    from webhook_service.storage import inbox as inbox_store
    from webhook_service.web.views import inbox_view

    async with Runtime.open(settings) as runtime, runtime.db.sessions() as session:
        rows = await inbox_store.list_events(
            session, tenant_id=args.tenant, status=args.status, limit=max(1, min(args.limit, 10_000))
        )
    _print_rows(
        [inbox_view(e) for e in rows],
        args.json,
        ("id", "event_name", "object_id", "tenant_id", "status", "received_at", "last_error"),
    )
    return EXIT_OK


def _add_backfill_command(commands: Any) -> None:
    bf = commands.add_parser(
        "backfill",
        help="poll FreshBooks for what webhooks missed (or: backfill status)",
        description="List what changed in FreshBooks since T (default: the stored watermark) and emit every "
        "object version not yet emitted, through the same pipeline as webhooks. `backfill status` shows the "
        "watermarks and how many events polling recovered.",
    )
    bf.add_argument("what", nargs="?", choices=["status"], help="show watermarks and recovery counts instead")
    target = bf.add_mutually_exclusive_group()
    target.add_argument("--tenant", metavar="ID", help="one tenant")
    target.add_argument("--all", action="store_true", help="every active tenant")
    bf.add_argument("--since", metavar="T", help="ISO 8601 with offset, or e.g. 2h, 3d (default: the watermark)")
    bf.add_argument("--until", metavar="T", help="ignore versions updated after T")
    bf.add_argument("--resources", metavar="LIST", help="comma-separated nouns, e.g. invoice,client (default: all)")
    bf.add_argument("--dry-run", action="store_true", help="report what would be emitted; change nothing")
    bf.add_argument("--json", action="store_true", help="print JSON")
    bf.set_defaults(handler=_run_async(_backfill))


def _add_subscription_commands(commands: Any) -> None:
    sub_commands = _command_group(
        commands,
        "subscriptions",
        help="downstream subscriber endpoints",
        description="Create and manage subscriptions.",
        title="subscription commands",
    )

    def fields(parser: argparse.ArgumentParser, *, creating: bool) -> None:
        parser.add_argument("--url", required=creating, help="where events are POSTed")
        parser.add_argument(
            "--events",
            nargs="+",
            metavar="TYPE",
            help="event type filters: '*', 'invoice.*', 'invoice.updated' (default: '*')",
        )
        parser.add_argument("--tenant", metavar="ID", help="only this tenant's events")
        parser.add_argument("--description")
        parser.add_argument("--rate-limit", type=int, metavar="N", help="at most N deliveries per second")
        parser.add_argument("--json", action="store_true", help="print JSON")

    create = sub_commands.add_parser(
        "create",
        help="add a subscription (its secret is shown once)",
        description="Add a subscription; the whsec_ secret is printed once.",
    )
    fields(create, creating=True)
    create.add_argument("--disabled", action="store_true", help="create it disabled")
    create.set_defaults(handler=_run_async(_subscriptions_create))

    lst = sub_commands.add_parser("list", help="list subscriptions", description="List subscriptions.")
    lst.add_argument("--json", action="store_true", help="print JSON")
    lst.set_defaults(handler=_run_async(_subscriptions_list))

    show = sub_commands.add_parser("show", help="show one subscription", description="Show one subscription.")
    show.add_argument("subscription_id")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=_run_async(_subscriptions_show))

    upd = sub_commands.add_parser("update", help="change a subscription", description="Change a subscription.")
    upd.add_argument("subscription_id")
    fields(upd, creating=False)
    upd.add_argument("--all-tenants", action="store_true", help="remove the tenant scope")
    upd.add_argument("--no-rate-limit", action="store_true", help="remove the rate limit")
    state = upd.add_mutually_exclusive_group()
    state.add_argument("--enable", action="store_true")
    state.add_argument("--disable", action="store_true")
    upd.set_defaults(handler=_run_async(_subscriptions_update))

    rm = sub_commands.add_parser(
        "delete",
        help="delete a subscription and its deliveries",
        description="Delete a subscription (and its delivery history).",
    )
    rm.add_argument("subscription_id")
    rm.set_defaults(handler=_run_async(_subscriptions_delete))

    rot = sub_commands.add_parser(
        "rotate-secret",
        help="new signing secret; the old one keeps signing for a grace period",
        description="Generate a new secret (printed once). The old one signs beside it for --grace-hours.",
    )
    rot.add_argument("subscription_id")
    rot.add_argument("--grace-hours", type=float, help="default: SECRET_ROTATION_GRACE_HOURS (24)")
    rot.add_argument("--json", action="store_true", help="print JSON")
    rot.set_defaults(handler=_run_async(_subscriptions_rotate))


def _add_delivery_commands(commands: Any) -> None:
    dl_commands = _command_group(
        commands,
        "deliveries",
        help="deliveries to subscribers: list, replay, recover",
        description="Watch and replay deliveries.",
        title="delivery commands",
    )

    lst = dl_commands.add_parser("list", help="list deliveries, newest first", description="List deliveries.")
    lst.add_argument("--status", choices=["pending", "failed", "succeeded", "dead"])
    lst.add_argument("--subscription", metavar="ID")
    lst.add_argument("--limit", type=int, default=100)
    lst.add_argument("--json", action="store_true", help="print JSON")
    lst.set_defaults(handler=_run_async(_deliveries_list))

    show = dl_commands.add_parser(
        "show", help="one delivery with every attempt", description="One delivery and its attempts."
    )
    show.add_argument("delivery_id")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=_run_async(_deliveries_show))

    rep = dl_commands.add_parser(
        "replay",
        help="send a delivery again (same webhook-id)",
        description="Queue a new attempt of the same message, on a fresh schedule.",
    )
    rep.add_argument("delivery_id")
    rep.add_argument("--json", action="store_true", help="print JSON")
    rep.set_defaults(handler=_run_async(_deliveries_replay))

    rec = dl_commands.add_parser(
        "recover",
        help="replay every failed or dead delivery since a time",
        description="Replay every failed or dead delivery of a subscription since T.",
    )
    rec.add_argument("--subscription", metavar="ID", required=True)
    rec.add_argument("--since", required=True, metavar="T", help="ISO 8601 with offset, or e.g. 2h, 3d")
    rec.add_argument("--json", action="store_true", help="print JSON")
    rec.set_defaults(handler=_run_async(_deliveries_recover))


def _add_purge_command(commands: Any) -> None:
    purge = commands.add_parser(
        "purge",
        help="delete what is past its retention (RETENTION_DAYS), now",
        description="Delete what the service keeps no longer: succeeded and dead deliveries completed more than "
        "RETENTION_DAYS ago with their attempts, events nothing holds any more, settled inbox events, superseded "
        "ledger rows, expired pending connections and leases; clear response bodies older than "
        "RETENTION_RESPONSE_BODY_DAYS. Nothing pending or retrying is touched. In batches of RETENTION_BATCH_SIZE "
        "rows, beside a running service.",
    )
    purge.add_argument("--dry-run", action="store_true", help="count what would go; change nothing")
    purge.add_argument("--json", action="store_true", help="print JSON")
    purge.set_defaults(handler=_run_async(_purge))


# -- handlers ---------------------------------------------------------------------------------
Handler = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int | None]]


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return EXIT_USAGE


def _run_async(handler: Handler) -> Callable[[Settings, argparse.Namespace], int | None]:
    def run(settings: Settings, args: argparse.Namespace) -> int | None:
        return asyncio.run(handler(settings, args))

    return run


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import contextlib

    import uvicorn

    from webhook_service.app import create_app
    from webhook_service.runtime import secret_box_from_settings
    from webhook_service.web.server import build_config

    secret_box_from_settings(settings)  # refuse a keyless start before binding the port
    config = build_config(
        settings,
        create_app(settings),
        host=args.host or settings.host,
        port=args.port if args.port is not None else settings.port,
    )
    server = uvicorn.Server(config)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises Ctrl-C after shutting down
        server.run()
    return EXIT_OK if server.started else EXIT_FAILED


async def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.runtime import Runtime

    async with Runtime.open(settings, migrate_schema=True):
        pass
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

    return demo.run(demo.Options(keep_running=args.keep_running, as_json=args.json))


async def _rotate_secret_key(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.runtime import Runtime
    from webhook_service.storage.rekey import reencrypt_all

    async with Runtime.open(settings) as runtime:
        count = await reencrypt_all(runtime.db, runtime.box)
    print(f"re-encrypted {count} secrets under the first SECRET_KEY key")
    return EXIT_OK


async def _tenants_import(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.runtime import Runtime
    from webhook_service.tenants import onboarding

    async with Runtime.open(settings) as runtime:
        try:
            if args.resume:
                outcome = await onboarding.complete(runtime, args.resume, args.business_id)
            else:
                outcome = await onboarding.import_refresh_token(runtime, args.refresh_token, args.business_id)
        except onboarding.OnboardingError as exc:
            raise CommandError(str(exc)) from exc
    if isinstance(outcome, onboarding.ChooseBusiness):
        choices = [
            {"business_id": m.business_id, "account_id": m.account_id, "name": m.name, "role": m.role}
            for m in outcome.memberships
        ]
        if args.json:
            _print_json({"status": "choose_business", "pending_id": outcome.pending_id, "businesses": choices})
        else:
            print(
                "This login belongs to several businesses. The token was rotated and is held as "
                f"{outcome.pending_id}; finish with:",
                file=sys.stderr,
            )
            for choice in choices:
                print(
                    f"  webhook-service tenants import --resume {outcome.pending_id} "
                    f"--business-id {choice['business_id']}   # {choice['name']} ({choice['role']})",
                    file=sys.stderr,
                )
        return EXIT_FAILED
    async with Runtime.open(settings) as runtime:
        from webhook_service.inbound import registrar

        report = await registrar.sync_tenant(runtime, outcome)
    if args.json:
        _print_json({**tenant_view(outcome), "callbacks": report.as_dict()})
    else:
        _print_tenants([outcome], False, single=True)
        _print_sync_report(report)
    return EXIT_OK


async def _callbacks_sync(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.inbound import registrar
    from webhook_service.runtime import Runtime
    from webhook_service.storage import tenants as tenant_store

    async with Runtime.open(settings) as runtime:
        if args.all:
            reports = await registrar.sync_all(runtime)
        else:
            async with runtime.db.sessions() as session:
                tenant = await tenant_store.get(session, args.tenant)
            if tenant is None:
                raise CommandError(f"no tenant {args.tenant}")
            reports = [await registrar.sync_tenant(runtime, tenant)]
    if args.json:
        _print_json([report.as_dict() for report in reports])
    else:
        for report in reports:
            _print_sync_report(report)
    return EXIT_FAILED if any(report.error for report in reports) else EXIT_OK


def _print_sync_report(report: Any) -> None:
    if report.error:
        print(f"{report.tenant_id}: FAILED: {report.error}")
        return
    parts = [
        f"{label} {', '.join(map(str, items))}"
        for label, items in (
            ("created", report.created),
            ("resent verification for", report.resent),
            ("replaced", report.replaced),
            ("deleted stale", report.deleted),
            ("retired", report.retired),
        )
        if items
    ]
    print(f"{report.tenant_id}: " + ("; ".join(parts) if parts else f"in sync ({len(report.unchanged)} callbacks)"))


async def _callbacks_list(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.runtime import Runtime
    from webhook_service.storage import callbacks as callback_store

    async with Runtime.open(settings) as runtime, runtime.db.sessions() as session:
        rows = await callback_store.list_all(session, tenant_id=args.tenant, include_retired=args.all_history)
    views = [callback_view(row) for row in rows]
    if args.json:
        _print_json(views)
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "tenant", "event", "state", "freshbooks id", "last event", "last error")
    for view in views:
        state = view["state"] if view["active"] else f"retired ({view['state']})"
        table.add_row(
            view["id"],
            view["tenant_id"],
            view["event"],
            state,
            str(view["freshbooks_callback_id"] or ""),
            view["last_event_at"] or "never",
            view["last_error"] or "",
        )
    Console().print(table)
    return EXIT_OK


async def _backfill(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.runtime import Runtime

    if args.what == "status":
        from webhook_service.backfill.sweep import status
        from webhook_service.web.views import backfill_state_view

        async with Runtime.open(settings) as runtime:
            rows = [backfill_state_view(s) for s in await status(runtime)]
        _print_rows(
            rows,
            args.json,
            (
                "tenant_id",
                "resource",
                "watermark",
                "last_run_at",
                "last_run_status",
                "last_scanned",
                "last_emitted",
                "recovered_by_polling",
            ),
        )
        return EXIT_OK
    if not (args.tenant or args.all):
        raise CommandError("choose --tenant ID or --all (or `backfill status`)")
    return await _backfill_run(settings, args)


async def _backfill_run(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.backfill.sweep import backfill_tenant
    from webhook_service.core.timeparse import parse_since
    from webhook_service.freshbooks.catalogue import CATALOGUE
    from webhook_service.runtime import Runtime
    from webhook_service.storage import tenants as tenant_store
    from webhook_service.storage.models import TenantStatus

    try:
        since = parse_since(args.since) if args.since else None
        until = parse_since(args.until) if args.until else None
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    resources = [r.strip() for r in args.resources.split(",") if r.strip()] if args.resources else None
    unknown = [r for r in resources or [] if r not in CATALOGUE]
    if unknown:
        raise CommandError(f"unknown resources {unknown}; known: {', '.join(CATALOGUE)}")
    reports = []
    async with Runtime.open(settings) as runtime:
        async with runtime.db.sessions() as session:
            if args.all:
                tenants = await tenant_store.list_all(session, status=TenantStatus.ACTIVE.value)
            else:
                tenant = await tenant_store.get(session, args.tenant)
                if tenant is None:
                    raise CommandError(f"no tenant {args.tenant}")
                tenants = [tenant]
        with _BackfillProgress(enabled=not args.json and sys.stderr.isatty()) as progress:
            for tenant in tenants:
                reports.append(
                    await backfill_tenant(
                        runtime,
                        tenant,
                        since=since,
                        until=until,
                        resources=resources,
                        dry_run=args.dry_run,
                        progress=progress.update,
                    )
                )
    failed = [r.tenant_id for r in reports if r.failed]
    if args.json:
        _print_json({"dry_run": args.dry_run, "tenants": [r.as_dict() for r in reports], "failed_tenants": failed})
    else:
        rows = [
            {
                "tenant_id": r.tenant_id,
                **{k: getattr(part, k) for k in ("resource", "pages", "scanned", "known", "emitted", "error")},
            }
            for r in reports
            for part in r.resources
        ]
        _print_rows(rows, False, ("tenant_id", "resource", "pages", "scanned", "known", "emitted", "error"))
        verb = "would emit" if args.dry_run else "emitted"
        total = sum(row["emitted"] for row in rows)
        print(
            f"{len(reports)} tenant(s): {sum(r['scanned'] for r in rows)} objects scanned, "
            f"{sum(r['known'] for r in rows)} already known, {total} {verb}"
        )
    if failed:
        print(f"error: backfill failed for tenant(s) {', '.join(failed)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


class _BackfillProgress:
    """A rich progress bar per tenant and resource, on a terminal only."""

    def __init__(self, *, enabled: bool) -> None:
        self._enabled = enabled
        self._bars: dict[tuple[str, str], Any] = {}
        self._progress: Any = None

    def __enter__(self) -> _BackfillProgress:
        if self._enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("pages, {task.fields[emitted]} emitted"),
                transient=False,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, tenant_id: str, resource: str, page: Any, emitted: int) -> None:
        if self._progress is None:
            return
        key = (tenant_id, resource)
        if key not in self._bars:
            self._bars[key] = self._progress.add_task(f"{tenant_id} {resource}", total=max(page.pages, 1), emitted=0)
        self._progress.update(self._bars[key], completed=min(page.page, max(page.pages, 1)), emitted=emitted)


async def _subscriptions_create(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.delivery import subscriptions
    from webhook_service.runtime import Runtime
    from webhook_service.web.views import subscription_view

    values = _subscription_fields(args)
    if args.disabled:
        values["enabled"] = False
    async with Runtime.open(settings) as runtime:
        created = await _subscription_call(subscriptions.create(runtime, values))
    view = {**subscription_view(created.subscription), "secret": created.secret}
    if args.json:
        _print_json(view)
    else:
        _print_record(view)
        print("Keep the secret now: it is not shown again.", file=sys.stderr)
    return EXIT_OK


async def _subscriptions_list(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.delivery import subscriptions
    from webhook_service.runtime import Runtime
    from webhook_service.web.views import subscription_view

    async with Runtime.open(settings) as runtime:
        views = [subscription_view(s) for s in await subscriptions.list_all(runtime)]
    _print_rows(views, args.json, ("id", "url", "event_types", "tenant_id", "enabled", "disabled_reason"))
    return EXIT_OK


async def _subscriptions_show(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.delivery import subscriptions
    from webhook_service.runtime import Runtime
    from webhook_service.web.views import subscription_view

    async with Runtime.open(settings) as runtime:
        view = subscription_view(await _subscription_call(subscriptions.get(runtime, args.subscription_id)))
    _print_json(view) if args.json else _print_record(view)
    return EXIT_OK


async def _subscriptions_update(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.delivery import subscriptions
    from webhook_service.runtime import Runtime
    from webhook_service.web.views import subscription_view

    values = _subscription_fields(args)
    if args.all_tenants:
        values["tenant_id"] = None
    if args.no_rate_limit:
        values["rate_limit_per_second"] = None
    if args.enable or args.disable:
        values["enabled"] = bool(args.enable)
    if not values:
        raise CommandError("nothing to change (see --help)")
    async with Runtime.open(settings) as runtime:
        view = subscription_view(await _subscription_call(subscriptions.modify(runtime, args.subscription_id, values)))
    _print_json(view) if args.json else _print_record(view)
    return EXIT_OK


async def _subscriptions_delete(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.delivery import subscriptions
    from webhook_service.runtime import Runtime

    async with Runtime.open(settings) as runtime:
        await _subscription_call(subscriptions.remove(runtime, args.subscription_id))
    print(f"{args.subscription_id} deleted")
    return EXIT_OK


async def _subscriptions_rotate(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import timedelta

    from webhook_service.delivery import subscriptions
    from webhook_service.runtime import Runtime
    from webhook_service.web.views import subscription_view

    grace = timedelta(hours=args.grace_hours) if args.grace_hours is not None else None
    async with Runtime.open(settings) as runtime:
        rotated = await _subscription_call(subscriptions.rotate_secret(runtime, args.subscription_id, grace))
    view = {**subscription_view(rotated.subscription), "secret": rotated.secret}
    if args.json:
        _print_json(view)
    else:
        _print_record(view)
        print("Keep the new secret now: it is not shown again.", file=sys.stderr)
    return EXIT_OK


def _subscription_fields(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for option, name in (
        ("url", "url"),
        ("events", "event_types"),
        ("tenant", "tenant_id"),
        ("description", "description"),
        ("rate_limit", "rate_limit_per_second"),
    ):
        if getattr(args, option, None) is not None:
            values[name] = getattr(args, option)
    return values


async def _subscription_call(awaitable: Any) -> Any:
    from webhook_service.delivery import subscriptions

    try:
        return await awaitable
    except subscriptions.SubscriptionError as exc:
        raise CommandError(str(exc)) from exc
    except subscriptions.SubscriptionNotFound as exc:
        raise CommandError(f"no subscription {exc.args[0]}") from exc


async def _deliveries_list(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.delivery import replay
    from webhook_service.runtime import Runtime
    from webhook_service.web.views import delivery_view

    async with Runtime.open(settings) as runtime:
        rows = await replay.list_deliveries(
            runtime, status=args.status, subscription_id=args.subscription, limit=max(1, min(args.limit, 10_000))
        )
    _print_rows(
        [delivery_view(d) for d in rows],
        args.json,
        ("id", "status", "attempts", "last_status_code", "subscription_id", "event_id", "created_at", "last_error"),
    )
    return EXIT_OK


async def _deliveries_show(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.delivery import replay
    from webhook_service.runtime import Runtime
    from webhook_service.web.views import delivery_view

    async with Runtime.open(settings) as runtime:
        try:
            delivery, attempts = await replay.get_with_attempts(runtime, args.delivery_id)
        except replay.DeliveryNotFound as exc:
            raise CommandError(f"no delivery {args.delivery_id}") from exc
    view = delivery_view(delivery, attempts)
    if args.json:
        _print_json(view)
        return EXIT_OK
    _print_record({k: v for k, v in view.items() if k != "attempt_log"})
    _print_rows(view["attempt_log"], False, ("number", "started_at", "status_code", "latency_ms", "error"))
    return EXIT_OK


async def _deliveries_replay(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.delivery import replay
    from webhook_service.runtime import Runtime
    from webhook_service.web.views import delivery_view

    async with Runtime.open(settings) as runtime:
        try:
            delivery = await replay.replay(runtime, args.delivery_id)
        except replay.DeliveryNotFound as exc:
            raise CommandError(f"no delivery {exc.args[0]}") from exc
        except replay.ReplayError as exc:
            raise CommandError(str(exc)) from exc
    _print_json(delivery_view(delivery)) if args.json else print(f"{delivery.id} queued for a new attempt")
    return EXIT_OK


async def _deliveries_recover(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.core.timeparse import parse_since
    from webhook_service.delivery import replay
    from webhook_service.runtime import Runtime

    try:
        since = parse_since(args.since)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    async with Runtime.open(settings) as runtime:
        try:
            recovered = await replay.recover(runtime, args.subscription, since)
        except replay.DeliveryNotFound as exc:
            raise CommandError(f"no subscription {args.subscription}") from exc
        except replay.ReplayError as exc:
            raise CommandError(str(exc)) from exc
    if args.json:
        _print_json({"recovered": recovered, "count": len(recovered), "since": since.isoformat()})
    else:
        print(f"{len(recovered)} deliveries queued again (failed or dead since {since.isoformat()})")
    return EXIT_OK


async def _purge(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.maintenance.retention import policy
    from webhook_service.runtime import Runtime
    from webhook_service.storage import retention

    async with Runtime.open(settings) as runtime:
        report = await retention.purge(runtime.db, policy(settings), dry_run=args.dry_run)
    if args.json:
        _print_json(report.as_dict())
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
    _print_rows(rows, False, ("table", "rows", "before"))
    if args.dry_run:
        print(f"would delete {report.total} rows and clear {report.response_bodies_cleared} response bodies")
    else:
        print(f"deleted {report.total} rows and cleared {report.response_bodies_cleared} response bodies")
    if report.sqlite_pages_freed:
        print(f"gave {report.sqlite_pages_freed} free pages back to the file system")
    return EXIT_OK


async def _tenants_list(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.runtime import Runtime
    from webhook_service.storage import tenants as tenant_store

    async with Runtime.open(settings) as runtime, runtime.db.sessions() as session:
        rows = await tenant_store.list_all(session)
    _print_tenants(rows, args.json)
    return EXIT_OK


async def _tenants_show(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.runtime import Runtime
    from webhook_service.storage import tenants as tenant_store

    async with Runtime.open(settings) as runtime, runtime.db.sessions() as session:
        tenant = await tenant_store.get(session, args.tenant_id)
    if tenant is None:
        raise CommandError(f"no tenant {args.tenant_id}")
    _print_tenants([tenant], args.json, single=True)
    return EXIT_OK


async def _tenants_disconnect(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.runtime import Runtime
    from webhook_service.tenants import onboarding

    async with Runtime.open(settings) as runtime:
        try:
            tenant, revoke_error = await onboarding.disconnect(runtime, args.tenant_id)
        except onboarding.OnboardingError as exc:
            raise CommandError(str(exc)) from exc
    if args.json:
        _print_json({**tenant_view(tenant), "revoked": revoke_error is None, "revoke_error": revoke_error})
    else:
        print(f"{tenant.id} disconnected")
        if revoke_error:
            print(
                f"warning: FreshBooks did not confirm the revocation ({revoke_error}); "
                "revoke the app's access in FreshBooks by hand",
                file=sys.stderr,
            )
    return EXIT_FAILED if revoke_error else EXIT_OK


# -- output -----------------------------------------------------------------------------------
def _print_record(view: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, box=None)
    for key, value in view.items():
        table.add_row(key, _cell(value))
    Console().print(table)


def _print_rows(views: list[dict[str, Any]], as_json: bool, columns: tuple[str, ...]) -> None:
    if as_json:
        _print_json(views)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns)
    for view in views:
        table.add_row(*(_cell(view.get(column)) for column in columns))
    Console().print(table)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=False))


def _print_tenants(rows: list[Tenant], as_json: bool, *, single: bool = False) -> None:
    views = [tenant_view(row) for row in rows]
    if single:
        _print_json(views[0]) if as_json else _print_record(views[0])
        return
    _print_rows(
        views, as_json, ("id", "name", "account_id", "business_id", "status", "status_reason", "access_expires_at")
    )
