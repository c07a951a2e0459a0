"""``tenants``: connect, list, inspect and disconnect FreshBooks businesses (tenants/onboarding.py)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from webhook_service.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    CommandError,
    found,
    in_session,
    list_command,
    open_runtime,
    program,
    show_command,
)
from webhook_service.cli.output import print_json, print_record, print_sync_report
from webhook_service.cli.spec import JSON, Command, Group, arg, one_of
from webhook_service.config import Settings
from webhook_service.storage import tenants as tenant_store
from webhook_service.storage.models import Tenant
from webhook_service.web.views import tenant_view

if TYPE_CHECKING:
    from webhook_service.runtime import Runtime
    from webhook_service.tenants.onboarding import ChooseBusiness

COLUMNS = ("id", "name", "account_id", "business_id", "status", "status_reason", "access_expires_at")


async def _import(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.inbound import registrar
    from webhook_service.tenants import onboarding

    async with open_runtime(settings) as runtime:
        try:
            if args.resume:
                outcome = await onboarding.complete(runtime, args.resume, args.business_id)
            else:
                outcome = await onboarding.import_refresh_token(runtime, args.refresh_token, args.business_id)
        except onboarding.OnboardingError as exc:
            raise CommandError(str(exc)) from exc
    if isinstance(outcome, onboarding.ChooseBusiness):
        return _choose_business(outcome, args.json)
    async with open_runtime(settings) as runtime:
        report = await registrar.sync_tenant(runtime, outcome)
    if args.json:
        print_json({**tenant_view(outcome), "callbacks": report.as_dict()})
    else:
        print_record(tenant_view(outcome))
        print_sync_report(report)
    return EXIT_OK


def _choose_business(outcome: ChooseBusiness, as_json: bool) -> int:
    choices = [
        {"business_id": m.business_id, "account_id": m.account_id, "name": m.name, "role": m.role}
        for m in outcome.memberships
    ]
    if as_json:
        print_json({"status": "choose_business", "pending_id": outcome.pending_id, "businesses": choices})
        return EXIT_FAILED
    print(
        "This login belongs to several businesses. The token was rotated and is held as "
        f"{outcome.pending_id}; finish with:",
        file=sys.stderr,
    )
    for choice in choices:
        print(
            f"  {program()} tenants import --resume {outcome.pending_id} "
            f"--business-id {choice['business_id']}   # {choice['name']} ({choice['role']})",
            file=sys.stderr,
        )
    return EXIT_FAILED


async def _tenants(runtime: Runtime, args: argparse.Namespace) -> list[Tenant]:
    return await in_session(runtime, tenant_store.list_all)


async def _tenant(runtime: Runtime, args: argparse.Namespace) -> Tenant:
    return found(await in_session(runtime, tenant_store.get, args.tenant_id), f"no tenant {args.tenant_id}")


async def _disconnect(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.tenants import onboarding

    async with open_runtime(settings) as runtime:
        try:
            tenant, revoke_error = await onboarding.disconnect(runtime, args.tenant_id)
        except onboarding.OnboardingError as exc:
            raise CommandError(str(exc)) from exc
    if args.json:
        print_json({**tenant_view(tenant), "revoked": revoke_error is None, "revoke_error": revoke_error})
    else:
        print(f"{tenant.id} disconnected")
        if revoke_error:
            print(
                f"warning: FreshBooks did not confirm the revocation ({revoke_error}); "
                "revoke the app's access in FreshBooks by hand",
                file=sys.stderr,
            )
    return EXIT_FAILED if revoke_error else EXIT_OK


TENANT_ID = arg("tenant_id")

GROUP = Group(
    "tenants",
    "connected FreshBooks businesses",
    "Connect, list, inspect and disconnect tenants.",
    (
        Command(
            "import",
            _import,
            "connect a business from an existing refresh token",
            "Spend REFRESH_TOKEN at once (FreshBooks rotates it), store the new pair before anything else, resolve "
            "the identity and create or reconnect the tenant.",
            (
                one_of(
                    arg("--refresh-token", help="a FreshBooks refresh token (single-use)"),
                    arg(
                        "--resume",
                        metavar="PENDING_ID",
                        help="finish an import that stopped to ask which business to connect",
                    ),
                    required=True,
                ),
                arg("--business-id", type=int, help="business to connect when the login has several"),
                JSON,
            ),
        ),
        Command(
            "list",
            list_command(_tenants, tenant_view, COLUMNS),
            "list tenants",
            "List tenants and their status.",
            (JSON,),
        ),
        Command("show", show_command(_tenant, tenant_view), "show one tenant", "Show one tenant.", (TENANT_ID, JSON)),
        Command(
            "disconnect",
            _disconnect,
            "revoke a tenant's grant and stop using it",
            "Revoke the token at FreshBooks, forget it, and mark the tenant disconnected.",
            (TENANT_ID, JSON),
        ),
    ),
)
