"""What every command shares: exit statuses, the errors a handler raises, opening the runtime.

A command that touches the database opens it through :func:`open_runtime`: the runtime checks the
configuration before any work (the secret key, ``FRESHBOOKS_EVENTS``), then one connection to
``DATABASE_URL``. A setting the service cannot run with is a
:class:`~webhook_service.config.ConfigurationError`, which :func:`webhook_service.cli.main.main`
prints on one line and exits 2 with.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from webhook_service.cli.output import print_json, print_rows, print_view
from webhook_service.config import Settings

if TYPE_CHECKING:
    from webhook_service.runtime import Runtime

T = TypeVar("T")
Fetch = Callable[["Runtime", argparse.Namespace], Awaitable[Any]]
"""What a list or show command reads, through the same functions as the admin API."""

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_CONFIGURATION = EXIT_USAGE  # the environment asked for the impossible, as a bad option does
EXIT_BROKEN_PIPE = 128 + 13  # the reader of stdout went away (SIGPIPE's status in a shell)


class CommandError(Exception):
    """A failure to report on one line, without a traceback (exit 1)."""


class UsageError(Exception):
    """The command line asks for something the command cannot do (exit 2, with the command's usage)."""


@asynccontextmanager
async def open_runtime(settings: Settings, *, migrate_schema: bool | None = None) -> AsyncIterator[Runtime]:
    from webhook_service.runtime import Runtime

    async with Runtime.open(settings, migrate_schema=migrate_schema) as runtime:
        await runtime.db.check()
        yield runtime


def list_command(
    fetch: Fetch,
    view: Callable[[Any], Mapping[str, Any]],
    columns: Sequence[str],
    table: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
) -> Callable[[Settings, argparse.Namespace], Awaitable[int]]:
    """A handler printing what ``fetch`` returns, each row through ``view``: JSON, or a table of
    ``columns`` (each view through ``table`` first, when given)."""

    async def handler(settings: Settings, args: argparse.Namespace) -> int:
        async with open_runtime(settings) as runtime:
            views = [view(row) for row in await fetch(runtime, args)]
        print_rows(views if args.json or table is None else [table(v) for v in views], args.json, columns)
        return EXIT_OK

    return handler


def show_command(
    fetch: Fetch, view: Callable[[Any], Mapping[str, Any]], *, always_json: bool = False
) -> Callable[[Settings, argparse.Namespace], Awaitable[int]]:
    """A handler printing the one record ``fetch`` returns (or raises :class:`CommandError` for)."""

    async def handler(settings: Settings, args: argparse.Namespace) -> int:
        async with open_runtime(settings) as runtime:
            record = await fetch(runtime, args)
        print_json(view(record)) if always_json else print_view(view(record), args.json)
        return EXIT_OK

    return handler


async def in_session(runtime: Runtime, query: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    """``query(session, *args, **kwargs)`` on a session of its own (a storage function)."""
    async with runtime.db.sessions() as session:
        return await query(session, *args, **kwargs)


def found(record: T | None, missing: str) -> T:
    """``record``, or :class:`CommandError` saying ``missing`` (``no tenant ten_...``)."""
    if record is None:
        raise CommandError(missing)
    return record


async def check_database(settings: Settings) -> None:
    """What ``serve`` checks before it binds its port: the secret key, and one connection."""
    from webhook_service.storage.database import Database

    check_settings(settings)
    db = Database(settings.database_url)
    try:
        await db.check()
    finally:
        await db.dispose()


def check_settings(settings: Settings) -> None:
    """What :meth:`Runtime.open <webhook_service.runtime.Runtime.open>` checks first, in the same
    order, for ``serve`` to refuse before it binds its port: each raises a :class:`ConfigurationError`
    naming the setting (``SECRET_KEY`` or the development key file, then ``FRESHBOOKS_EVENTS``)."""
    from webhook_service.freshbooks.catalogue import subscribed_nouns
    from webhook_service.runtime import secret_box_from_settings

    secret_box_from_settings(settings)
    subscribed_nouns(settings.freshbooks_events)


def program() -> str:
    """This command line as its user started it, for hints that must work as written: ``webhook-service``
    when that is on PATH, else the path typed (``.venv/bin/webhook-service``), or ``python -m``."""
    started = sys.argv[0] if sys.argv else ""
    if os.path.basename(started) == "webhook-service":
        found = shutil.which("webhook-service")
        if os.sep not in started or (found and os.path.abspath(found) == os.path.abspath(started)):
            return "webhook-service"
        return _as_typed(started)
    return f"{_as_typed(sys.executable)} -m webhook_service"


def _as_typed(path: str) -> str:
    """Relative to the working directory when below it (``.venv/bin/python``), else absolute."""
    absolute = os.path.abspath(path)
    relative = os.path.relpath(absolute)
    shown = relative if not relative.startswith("..") else absolute
    return shlex.quote(shown if os.sep in shown else f".{os.sep}{shown}")
