"""``backfill``: poll FreshBooks for what webhooks missed, and ``backfill status`` (backfill/sweep.py)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from webhook_service.cli.common import EXIT_FAILED, EXIT_OK, found, in_session, list_command, open_runtime
from webhook_service.cli.output import BackfillProgress, print_json, print_rows
from webhook_service.cli.spec import ALL_TENANTS, JSON, TARGET_TENANT, Command, arg, one_of, since_time
from webhook_service.config import Settings
from webhook_service.storage import tenants as tenant_store
from webhook_service.storage.models import BackfillState, TenantStatus
from webhook_service.web.views import backfill_state_view

if TYPE_CHECKING:
    from webhook_service.runtime import Runtime

STATUS_COLUMNS = (
    "tenant_id",
    "resource",
    "watermark",
    "last_run_at",
    "last_run_status",
    "last_scanned",
    "last_emitted",
    "recovered_by_polling",
)
RUN_COLUMNS = ("tenant_id", "resource", "pages", "scanned", "known", "emitted", "error")
RUN_OPTIONS = {  # attribute -> option, of what only a run takes
    "tenant": "--tenant",
    "all": "--all",
    "since": "--since",
    "until": "--until",
    "resources": "--resources",
    "dry_run": "--dry-run",
}


async def _backfill(settings: Settings, args: argparse.Namespace) -> int:
    if args.what == "status":
        return await list_command(_states, backfill_state_view, STATUS_COLUMNS)(settings, args)
    return await _run(settings, args)


async def _states(runtime: Runtime, args: argparse.Namespace) -> list[BackfillState]:
    from webhook_service.backfill.sweep import status

    return await status(runtime)


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.backfill.sweep import backfill_tenant

    reports = []
    async with open_runtime(settings) as runtime:
        if args.all:
            tenants = await in_session(runtime, tenant_store.list_all, status=TenantStatus.ACTIVE.value)
        else:
            tenants = [found(await in_session(runtime, tenant_store.get, args.tenant), f"no tenant {args.tenant}")]
        with BackfillProgress(enabled=not args.json and sys.stderr.isatty()) as progress:
            for tenant in tenants:
                reports.append(
                    await backfill_tenant(
                        runtime,
                        tenant,
                        since=args.since,
                        until=args.until,
                        resources=args.resources,
                        dry_run=args.dry_run,
                        progress=progress.update,
                    )
                )
    failed = [r.tenant_id for r in reports if r.failed]
    if args.json:
        print_json({"dry_run": args.dry_run, "tenants": [r.as_dict() for r in reports], "failed_tenants": failed})
    else:
        rows = [
            {"tenant_id": r.tenant_id, **{k: getattr(part, k) for k in RUN_COLUMNS[1:]}}
            for r in reports
            for part in r.resources
        ]
        print_rows(rows, False, RUN_COLUMNS)
        verb = "would emit" if args.dry_run else "emitted"
        print(
            f"{len(reports)} tenant(s): {sum(r['scanned'] for r in rows)} objects scanned, "
            f"{sum(r['known'] for r in rows)} already known, {sum(r['emitted'] for r in rows)} {verb}"
        )
    if failed:
        print(f"error: backfill failed for tenant(s) {', '.join(failed)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _check(args: argparse.Namespace) -> str | None:
    """``backfill status`` takes only --json; a run needs a target."""
    given = [flag for option, flag in RUN_OPTIONS.items() if getattr(args, option) not in (None, False)]
    if args.what == "status" and given:
        return f"`backfill status` takes no {' '.join(given)} (only --json)"
    if args.what is None and not (args.tenant or args.all):
        return "choose --tenant ID or --all (or `backfill status`)"
    return None


def _resources(text: str) -> list[str] | None:
    """``--resources invoice,client``: FreshBooks nouns the catalogue knows (argparse refuses others)."""
    from webhook_service.freshbooks.catalogue import CATALOGUE

    resources = [r.strip() for r in text.split(",") if r.strip()]
    unknown = [r for r in resources if r not in CATALOGUE]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown resources {unknown}; known: {', '.join(CATALOGUE)}")
    return resources or None


COMMAND = Command(
    "backfill",
    _backfill,
    "poll FreshBooks for what webhooks missed (or: backfill status)",
    "List what changed in FreshBooks since T (default: the stored watermark) and emit every object version not yet "
    "emitted, through the same pipeline as webhooks. `backfill status` shows the watermarks and how many events "
    "polling recovered.",
    (
        arg("what", nargs="?", choices=["status"], help="show watermarks and recovery counts instead"),
        one_of(TARGET_TENANT, ALL_TENANTS),
        arg(
            "--since",
            metavar="T",
            type=since_time,
            help="ISO 8601 with offset, or e.g. 2h, 3d (default: the watermark)",
        ),
        arg("--until", metavar="T", type=since_time, help="ignore versions updated after T"),
        arg(
            "--resources",
            metavar="LIST",
            type=_resources,
            help="comma-separated nouns, e.g. invoice,client (default: all)",
        ),
        arg("--dry-run", action="store_true", help="report what would be emitted; change nothing"),
        JSON,
    ),
    check=_check,
)
