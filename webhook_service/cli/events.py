"""``events`` (normalized events) and ``inbox`` (FreshBooks deliveries as received)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from webhook_service.cli.common import found, in_session, list_command, show_command
from webhook_service.cli.spec import JSON, LIMIT, TENANT_FILTER, Command, Group, arg
from webhook_service.contract.types import EventOrigin
from webhook_service.storage import events as event_store
from webhook_service.storage import inbox as inbox_store
from webhook_service.storage.models import Event, InboxEvent
from webhook_service.web.views import event_view, inbox_view

if TYPE_CHECKING:
    from webhook_service.runtime import Runtime

EVENT_COLUMNS = ("id", "type", "tenant_id", "object_id", "origin", "occurred_at", "created_at")
INBOX_COLUMNS = ("id", "event_name", "object_id", "tenant_id", "status", "received_at", "last_error")


def _limit(args: argparse.Namespace) -> int:
    return max(1, min(args.limit, 10_000))


async def _events(runtime: Runtime, args: argparse.Namespace) -> list[Event]:
    return await in_session(
        runtime,
        event_store.list_events,
        tenant_id=args.tenant,
        event_type=args.type,
        origin=args.origin,
        limit=_limit(args),
    )


async def _event(runtime: Runtime, args: argparse.Namespace) -> Event:
    return found(await in_session(runtime, event_store.get, args.event_id), f"no event {args.event_id}")


async def _inbox(runtime: Runtime, args: argparse.Namespace) -> list[InboxEvent]:
    return await in_session(
        runtime, inbox_store.list_events, tenant_id=args.tenant, status=args.status, limit=_limit(args)
    )


def _listed_event(event: Event) -> dict[str, Any]:
    return event_view(event, with_payload=False)


GROUPS = (
    Group(
        "events",
        "normalized events",
        "List and show normalized events.",
        (
            Command(
                "list",
                list_command(_events, _listed_event, EVENT_COLUMNS),
                "events, newest first",
                "List normalized events.",
                (
                    TENANT_FILTER,
                    arg("--type", metavar="TYPE", help="e.g. invoice.updated"),
                    arg(
                        "--origin",
                        choices=[origin.value for origin in EventOrigin],
                        help="webhook, backfill, or service (operational events)",
                    ),
                    LIMIT,
                    JSON,
                ),
            ),
            Command(
                "show",
                show_command(_event, event_view, always_json=True),
                "one event with its payload (JSON)",
                args=(arg("event_id"),),
            ),
        ),
    ),
    Group(
        "inbox",
        "FreshBooks deliveries as received",
        "The durable inbox of verified FreshBooks deliveries.",
        (
            Command(
                "list",
                list_command(_inbox, inbox_view, INBOX_COLUMNS),
                "inbox events, newest first",
                "List inbox events.",
                (
                    TENANT_FILTER,
                    arg("--status", choices=["pending", "duplicate", "processed", "failed"]),
                    LIMIT,
                    JSON,
                ),
            ),
        ),
    ),
)
