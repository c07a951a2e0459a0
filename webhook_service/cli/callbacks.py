"""``callbacks``: reconcile each tenant's FreshBooks webhook callbacks, and list them (inbound/registrar.py)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from webhook_service.cli.common import EXIT_FAILED, EXIT_OK, found, in_session, list_command, open_runtime
from webhook_service.cli.output import print_json, print_sync_report
from webhook_service.cli.spec import ALL_TENANTS, JSON, TARGET_TENANT, TENANT_FILTER, Command, Group, arg, one_of
from webhook_service.config import Settings
from webhook_service.storage import callbacks as callback_store
from webhook_service.storage import tenants as tenant_store
from webhook_service.storage.models import Callback
from webhook_service.web.views import callback_view

if TYPE_CHECKING:
    from webhook_service.runtime import Runtime

COLUMNS = ("id", "tenant_id", "event", "state", "freshbooks_callback_id", "last_event_at", "last_error")


async def _sync(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.inbound import registrar

    async with open_runtime(settings) as runtime:
        if args.all:
            reports = await registrar.sync_all(runtime)
        else:
            tenant = found(await in_session(runtime, tenant_store.get, args.tenant), f"no tenant {args.tenant}")
            reports = [await registrar.sync_tenant(runtime, tenant)]
    if args.json:
        print_json([report.as_dict() for report in reports])
    else:
        for report in reports:
            print_sync_report(report)
    return EXIT_FAILED if any(report.error for report in reports) else EXIT_OK


async def _callbacks(runtime: Runtime, args: argparse.Namespace) -> list[Callback]:
    return await in_session(runtime, callback_store.list_all, tenant_id=args.tenant, include_retired=args.all_history)


def _row(view: Mapping[str, Any]) -> dict[str, Any]:
    """The table says what a retired callback was, and "never" for no event yet (JSON: as the API)."""
    state = view["state"] if view["active"] else f"retired ({view['state']})"
    return {**view, "state": state, "last_event_at": view["last_event_at"] or "never"}


GROUP = Group(
    "callbacks",
    "FreshBooks webhook callbacks per tenant",
    "Reconcile and list callbacks.",
    (
        Command(
            "sync",
            _sync,
            "reconcile callbacks with FreshBooks",
            "Create missing callbacks, ask FreshBooks to resend pending verifications, replace dropped or disabled "
            "ones, delete the service's stale ones; leaves other callbacks alone.",
            (one_of(TARGET_TENANT, ALL_TENANTS, required=True), JSON),
        ),
        Command(
            "list",
            list_command(_callbacks, callback_view, COLUMNS, _row),
            "list callbacks and their state",
            "Callbacks with state and last event time.",
            (TENANT_FILTER, arg("--all-history", action="store_true", help="include retired callbacks"), JSON),
        ),
    ),
)
