"""``subscriptions``: the downstream endpoints events are delivered to (delivery/subscriptions.py)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from webhook_service.cli.common import EXIT_OK, CommandError, list_command, open_runtime, show_command
from webhook_service.cli.output import print_json, print_record, print_secret, print_view
from webhook_service.cli.spec import JSON, Command, Group, arg, one_of
from webhook_service.config import Settings
from webhook_service.contract.filters import FilterError, canonical
from webhook_service.storage.models import Subscription
from webhook_service.web.views import subscription_view

if TYPE_CHECKING:
    from webhook_service.runtime import Runtime

T = TypeVar("T")
COLUMNS = ("id", "url", "event_types", "tenant_id", "enabled", "disabled_reason")
FIELDS = (  # option -> field of delivery/subscriptions.py
    ("url", "url"),
    ("events", "event_types"),
    ("tenant", "tenant_id"),
    ("description", "description"),
    ("rate_limit", "rate_limit_per_second"),
    ("filter", "filter"),
)


async def _create(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.delivery import subscriptions

    values = _fields(args) | ({"enabled": False} if args.disabled else {})
    values |= {"strict_order": True} if args.strict_order else {}
    async with open_runtime(settings) as runtime:
        created = await _call(subscriptions.create(runtime, values))
    _print_with_secret(created, args.json, "Keep the secret now: it is not shown again.")
    return EXIT_OK


async def _rotate(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.delivery import subscriptions

    grace = timedelta(hours=args.grace_hours) if args.grace_hours is not None else None
    async with open_runtime(settings) as runtime:
        rotated = await _call(subscriptions.rotate_secret(runtime, args.subscription_id, grace))
    _print_with_secret(rotated, args.json, "Keep the new secret now: it is not shown again.")
    return EXIT_OK


def _print_with_secret(created: Any, as_json: bool, warning: str) -> None:
    view = subscription_view(created.subscription)
    if as_json:
        print_json({**view, "secret": created.secret})
        return
    print_record(view)
    print_secret(created.secret, warning)


async def _subscriptions(runtime: Runtime, args: argparse.Namespace) -> list[Subscription]:
    from webhook_service.delivery import subscriptions

    return await subscriptions.list_all(runtime)


async def _subscription(runtime: Runtime, args: argparse.Namespace) -> Subscription:
    from webhook_service.delivery import subscriptions

    return await _call(subscriptions.get(runtime, args.subscription_id))


async def _update(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.delivery import subscriptions

    async with open_runtime(settings) as runtime:
        changed = await _call(subscriptions.modify(runtime, args.subscription_id, _changes(args)))
    print_view(subscription_view(changed), args.json)
    return EXIT_OK


async def _delete(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.delivery import subscriptions

    async with open_runtime(settings) as runtime:
        await _call(subscriptions.remove(runtime, args.subscription_id))
    print(f"{args.subscription_id} deleted")
    return EXIT_OK


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, option) for option, name in FIELDS if getattr(args, option, None) is not None}


def _changes(args: argparse.Namespace) -> dict[str, Any]:
    values = _fields(args)
    if args.all_tenants:
        values["tenant_id"] = None
    if args.no_rate_limit:
        values["rate_limit_per_second"] = None
    if args.enable or args.disable:
        values["enabled"] = bool(args.enable)
    if args.no_filter:
        values["filter"] = None
    if args.strict_order or args.no_strict_order:
        values["strict_order"] = bool(args.strict_order)
    return values


def payload_filter(text: str) -> dict[str, Any]:
    """``--filter``: a filter argparse refuses (exit 2, naming the problem) before any work."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty: give a JSON object (on update, --no-filter removes the filter)")
    try:
        spec = json.loads(text, parse_constant=_not_json)
    except (ValueError, RecursionError) as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc})") from None
    try:
        canonical(spec)
    except FilterError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return spec


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _nothing_to_change(args: argparse.Namespace) -> str | None:
    return None if _changes(args) else "nothing to change: give at least one option"


async def _call(awaitable: Awaitable[T]) -> T:
    from webhook_service.delivery import subscriptions

    try:
        return await awaitable
    except subscriptions.SubscriptionError as exc:
        raise CommandError(str(exc)) from exc
    except subscriptions.SubscriptionNotFound as exc:
        raise CommandError(f"no subscription {exc.args[0]}") from exc


SUBSCRIPTION_ID = arg("subscription_id")
URL = arg("--url", help="where events are POSTed")
EVENTS = arg(
    "--events", nargs="+", metavar="TYPE", help="event type filters: '*', 'invoice.*', 'invoice.updated' (default: '*')"
)
TENANT = arg("--tenant", metavar="ID", help="only this tenant's events")
DESCRIPTION = arg("--description")
RATE_LIMIT = arg("--rate-limit", type=int, metavar="N", help="at most N deliveries per second")
FILTER = arg(
    "--filter",
    type=payload_filter,
    metavar="JSON",
    help="""only events whose body matches this payload filter, e.g. '{"data.object.v3_status": {"$in": ["paid"]}}'""",
)
STRICT_ORDER = arg("--strict-order", action="store_true", help="deliver each object's events one at a time, in order")

GROUP = Group(
    "subscriptions",
    "downstream subscriber endpoints",
    "Create and manage subscriptions.",
    (
        Command(
            "create",
            _create,
            "add a subscription (its secret is shown once)",
            "Add a subscription; the whsec_ secret is printed once, whole, on its own line.",
            (
                arg("--url", required=True, help="where events are POSTed"),
                EVENTS,
                TENANT,
                DESCRIPTION,
                RATE_LIMIT,
                FILTER,
                STRICT_ORDER,
                arg("--disabled", action="store_true", help="create it disabled"),
                JSON,
            ),
        ),
        Command(
            "list",
            list_command(_subscriptions, subscription_view, COLUMNS),
            "list subscriptions",
            "List subscriptions (never their secrets).",
            (JSON,),
        ),
        Command(
            "show",
            show_command(_subscription, subscription_view),
            "show one subscription",
            "Show one subscription.",
            (SUBSCRIPTION_ID, JSON),
        ),
        Command(
            "update",
            _update,
            "change a subscription",
            "Change a subscription: only what the options name.",
            (
                SUBSCRIPTION_ID,
                URL,
                EVENTS,
                one_of(TENANT, arg("--all-tenants", action="store_true", help="remove the tenant scope")),
                DESCRIPTION,
                one_of(RATE_LIMIT, arg("--no-rate-limit", action="store_true", help="remove the rate limit")),
                one_of(FILTER, arg("--no-filter", action="store_true", help="remove the payload filter")),
                one_of(STRICT_ORDER, arg("--no-strict-order", action="store_true", help="deliver without ordering")),
                one_of(arg("--enable", action="store_true"), arg("--disable", action="store_true")),
                JSON,
            ),
            check=_nothing_to_change,
        ),
        Command(
            "delete",
            _delete,
            "delete a subscription and its deliveries",
            "Delete a subscription (and its delivery history).",
            (SUBSCRIPTION_ID,),
        ),
        Command(
            "rotate-secret",
            _rotate,
            "new signing secret; the old one keeps signing for a grace period",
            "Generate a new secret (printed once, whole, on its own line). The old one signs beside it for "
            "--grace-hours.",
            (
                SUBSCRIPTION_ID,
                arg("--grace-hours", type=float, help="default: SECRET_ROTATION_GRACE_HOURS (24)"),
                JSON,
            ),
        ),
    ),
)
