"""``event-types``: the published event catalogue, a JSON Schema and an example per event type.

It reads :mod:`webhook_service.contract.schemas` and nothing else: no database, no ``SECRET_KEY``,
so whoever writes a subscriber can look at the contract wherever the package is installed. The
JSON is the admin API's (``GET /admin/v1/event-types``), through the same views.
"""

from __future__ import annotations

import argparse

from webhook_service.cli.common import EXIT_OK, CommandError
from webhook_service.cli.output import print_json, print_lines
from webhook_service.cli.spec import JSON, Command, Group, arg
from webhook_service.config import Settings
from webhook_service.contract import schemas as catalogue
from webhook_service.web.views import event_type_view


def _list(settings: Settings, args: argparse.Namespace) -> int:
    kinds = catalogue.EVENT_TYPES.values()
    if args.json:
        print_json([event_type_view(kind, detail=False) for kind in kinds])
    else:
        print_lines([(kind.type, kind.origin, kind.description) for kind in kinds])
    return EXIT_OK


def _show(settings: Settings, args: argparse.Namespace) -> int:
    try:
        kind = catalogue.get(args.type)
    except KeyError:
        raise CommandError(f"no event type {args.type!r}; `event-types list` lists them") from None
    if args.json:
        print_json(event_type_view(kind))
        return EXIT_OK
    print(f"{kind.type} ({kind.origin})")
    print(kind.description)
    for title, value in (("schema", kind.schema), ("example", kind.example)):
        print(f"\n{title}:")
        print_json(value)
    return EXIT_OK


GROUP = Group(
    "event-types",
    "the event types subscribers receive, with their JSON Schemas",
    "The published event catalogue: each event type, its JSON Schema (draft 2020-12) and an example. "
    "Needs no database.",
    (
        Command("list", _list, "every event type, FreshBooks-derived first", "List the event types.", (JSON,)),
        Command(
            "show",
            _show,
            "one event type: its description, JSON Schema and an example",
            args=(arg("type", metavar="TYPE", help="e.g. invoice.updated"), JSON),
        ),
    ),
)
