"""The argparse parser, assembled from each command module's table (see :mod:`.spec`)."""

from __future__ import annotations

import argparse
from typing import Any

from webhook_service import __version__
from webhook_service.cli import backfill, callbacks, deliveries, event_types, events, service, subscriptions, tenants
from webhook_service.cli.spec import Arg, Command, Group, OneOf

#: Every command, in the order ``--help`` lists them.
COMMANDS: tuple[Command | Group, ...] = (
    *service.COMMANDS,
    callbacks.GROUP,
    backfill.COMMAND,
    *events.GROUPS,
    event_types.GROUP,
    subscriptions.GROUP,
    deliveries.GROUP,
    service.PURGE_COMMAND,
    tenants.GROUP,
)


def build_parser() -> argparse.ArgumentParser:
    """Each parsed namespace carries ``handler`` (None: print ``parser``'s help), ``parser`` (the
    command's own, for its usage errors) and ``check`` (a usage rule, or None)."""
    parser = argparse.ArgumentParser(
        prog="webhook-service",
        description="Receives FreshBooks webhooks per connected business (tenant), verifies and "
        "normalizes them, and forwards them to your services.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.set_defaults(handler=None, parser=parser, check=None)
    _add(parser.add_subparsers(title="commands", metavar="COMMAND"), COMMANDS)
    return parser


def _add(subparsers: Any, entries: tuple[Command | Group, ...]) -> None:
    for entry in entries:
        if isinstance(entry, Group):
            group = subparsers.add_parser(entry.name, help=entry.help, description=entry.description)
            group.set_defaults(handler=None, parser=group, check=None)
            _add(group.add_subparsers(title=f"{entry.name} commands", metavar="COMMAND"), entry.commands)
            continue
        command = subparsers.add_parser(entry.name, help=entry.help, description=entry.description or entry.help)
        command.set_defaults(handler=entry.handler, parser=command, check=entry.check)
        for argument in entry.args:
            if isinstance(argument, OneOf):
                exclusive = command.add_mutually_exclusive_group(required=argument.required)
                for member in argument.args:
                    _add_argument(exclusive, member)
            else:
                _add_argument(command, argument)


def _add_argument(parser: Any, argument: Arg) -> None:
    parser.add_argument(*argument.flags, **argument.options)
