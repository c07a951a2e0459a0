"""``deliveries``: watch, replay and recover deliveries to subscribers (delivery/replay.py)."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar

from webhook_service.cli.common import EXIT_OK, CommandError, list_command, open_runtime
from webhook_service.cli.output import print_json, print_record, print_rows
from webhook_service.cli.spec import JSON, LIMIT, Command, Group, arg, since_time
from webhook_service.config import Settings
from webhook_service.storage.models import Delivery
from webhook_service.web.views import delivery_view

if TYPE_CHECKING:
    from webhook_service.runtime import Runtime

T = TypeVar("T")
COLUMNS = ("id", "status", "attempts", "last_status_code", "subscription_id", "event_id", "created_at", "last_error")
ATTEMPT_COLUMNS = ("number", "started_at", "status_code", "latency_ms", "error")


async def _deliveries(runtime: Runtime, args: argparse.Namespace) -> list[Delivery]:
    from webhook_service.delivery import replay

    limit = max(1, min(args.limit, 10_000))
    return await replay.list_deliveries(runtime, status=args.status, subscription_id=args.subscription, limit=limit)


async def _show(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.delivery import replay

    async with open_runtime(settings) as runtime:
        delivery, attempts = await _call(replay.get_with_attempts(runtime, args.delivery_id), _no_delivery(args))
    view = delivery_view(delivery, attempts)
    if args.json:
        print_json(view)
        return EXIT_OK
    print_record({k: v for k, v in view.items() if k != "attempt_log"})
    print_rows(view["attempt_log"], False, ATTEMPT_COLUMNS)
    return EXIT_OK


async def _replay(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.delivery import replay

    async with open_runtime(settings) as runtime:
        delivery = await _call(replay.replay(runtime, args.delivery_id), _no_delivery(args))
    print_json(delivery_view(delivery)) if args.json else print(f"{delivery.id} queued for a new attempt")
    return EXIT_OK


async def _recover(settings: Settings, args: argparse.Namespace) -> int:
    from webhook_service.delivery import replay

    async with open_runtime(settings) as runtime:
        recovered = await _call(
            replay.recover(runtime, args.subscription, args.since), f"no subscription {args.subscription}"
        )
    if args.json:
        print_json({"recovered": recovered, "count": len(recovered), "since": args.since.isoformat()})
    else:
        print(f"{len(recovered)} deliveries queued again (failed or dead since {args.since.isoformat()})")
    return EXIT_OK


def _no_delivery(args: argparse.Namespace) -> str:
    return f"no delivery {args.delivery_id}"


async def _call(awaitable: Awaitable[T], not_found: str) -> T:
    """The replay function's answer, or what it refused as one line (``not_found``: when nothing is there)."""
    from webhook_service.delivery import replay

    try:
        return await awaitable
    except replay.DeliveryNotFound as exc:
        raise CommandError(not_found) from exc
    except replay.ReplayError as exc:
        raise CommandError(str(exc)) from exc


DELIVERY_ID = arg("delivery_id")

GROUP = Group(
    "deliveries",
    "deliveries to subscribers: list, replay, recover",
    "Watch and replay deliveries.",
    (
        Command(
            "list",
            list_command(_deliveries, delivery_view, COLUMNS),
            "list deliveries, newest first",
            "List deliveries.",
            (
                arg("--status", choices=["pending", "failed", "succeeded", "dead"]),
                arg("--subscription", metavar="ID"),
                LIMIT,
                JSON,
            ),
        ),
        Command(
            "show", _show, "one delivery with every attempt", "One delivery and its attempts.", (DELIVERY_ID, JSON)
        ),
        Command(
            "replay",
            _replay,
            "send a delivery again (same webhook-id)",
            "Queue a new attempt of the same message, on a fresh schedule.",
            (DELIVERY_ID, JSON),
        ),
        Command(
            "recover",
            _recover,
            "replay every failed or dead delivery since a time",
            "Replay every failed or dead delivery of a subscription since T.",
            (
                arg("--subscription", metavar="ID", required=True),
                arg(
                    "--since", required=True, metavar="T", type=since_time, help="ISO 8601 with offset, or e.g. 2h, 3d"
                ),
                JSON,
            ),
        ),
    ),
)
