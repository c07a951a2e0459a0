"""How a command is declared: a table of :class:`Command` and :class:`Group` rows per module.

:mod:`webhook_service.cli.parser` turns the tables into argparse parsers, so a command is one row
(its name, its handler, its help and its arguments) and no module repeats the argparse set-up.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from webhook_service.config import Settings

Handler = Callable[[Settings, argparse.Namespace], "int | None | Awaitable[int | None]"]
"""What a command runs: given the settings and the parsed arguments, its exit status (None: 0).
A coroutine function is run with ``asyncio.run``."""

Check = Callable[[argparse.Namespace], "str | None"]
"""A usage rule argparse cannot express; the text of the usage error, or None."""


@dataclass(frozen=True)
class Arg:
    """One ``add_argument`` call."""

    flags: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


def arg(*flags: str, **options: Any) -> Arg:
    return Arg(flags, options)


@dataclass(frozen=True)
class OneOf:
    """Mutually exclusive arguments; ``required``: exactly one of them."""

    args: tuple[Arg, ...]
    required: bool = False


def one_of(*args: Arg, required: bool = False) -> OneOf:
    return OneOf(args, required)


@dataclass(frozen=True)
class Command:
    name: str
    handler: Handler
    help: str
    description: str | None = None  # default: the help
    args: tuple[Arg | OneOf, ...] = ()
    check: Check | None = None


@dataclass(frozen=True)
class Group:
    """A command with subcommands (``tenants list``); alone, it prints its help and exits 2."""

    name: str
    help: str
    description: str
    commands: tuple[Command, ...]


# The arguments several commands share.
JSON = arg("--json", action="store_true", help="print JSON")
LIMIT = arg("--limit", type=int, default=100, help="at most N rows (default: 100)", metavar="N")
TENANT_FILTER = arg("--tenant", metavar="ID", help="only this tenant")
TARGET_TENANT = arg("--tenant", metavar="ID", help="one tenant")
ALL_TENANTS = arg("--all", action="store_true", help="every active tenant")


def since_time(text: str) -> Any:
    """``--since`` and ``--until``: a time argparse refuses (exit 2) when it cannot be read."""
    from webhook_service.core.timeparse import parse_since

    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
