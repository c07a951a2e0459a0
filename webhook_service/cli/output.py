"""Everything the CLI prints as a table, a record or JSON, in one place.

Identifiers (``id`` and every ``*_id`` column) and secrets are never shortened, whatever the
terminal's width: an operator copies them into ``show``, ``replay`` and the admin API. A list is a
table when its identifiers fit the terminal whole and every other column keeps a readable width
(those fold onto more lines); when they cannot, each row is printed as a block of ``field value``
lines instead. Piped or redirected, a table is as wide as its content, one line per row.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from rich.cells import cell_len
from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

READABLE = 10
"""The narrowest a non-identifier column may fold to before a list is printed as blocks instead."""


def is_identifier(key: str) -> bool:
    return key == "id" or key.endswith("_id") or key in {"duplicate_of", "secret"}


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=False))


def print_view(view: Mapping[str, Any], as_json: bool) -> None:
    """One record: JSON, or ``field value`` lines."""
    print_json(view) if as_json else print_record(view)


def print_record(view: Mapping[str, Any]) -> None:
    """One record as ``field value`` lines (``show`` and friends)."""
    _print_record(_console(), [(key, _cell(value)) for key, value in view.items()])


def print_rows(views: Sequence[Mapping[str, Any]], as_json: bool, columns: Sequence[str]) -> None:
    """A list: JSON, or a table of ``columns`` (see the module's docstring for its width)."""
    if as_json:
        print_json(list(views))
        return
    rows = [[_cell(view.get(column)) for column in columns] for view in views]
    headers = [column.replace("_", " ") for column in columns]  # a header wraps between its words
    values = [max((_width(row[n]) for row in rows), default=0) for n in range(len(columns))]
    shortest = [  # an identifier whole; any other column down to READABLE (it folds)
        max(value, _longest_word(header)) if is_identifier(column) else min(max(value, cell_len(header)), READABLE)
        for column, header, value in zip(columns, headers, values, strict=True)
    ]
    border = 3 * len(columns) + 1  # a space either side of each cell, a rule between and around them
    console = _console(natural=border + sum(max(v, cell_len(h)) for v, h in zip(values, headers, strict=True)))
    if rows and border + sum(shortest) > console.width:
        for number, row in enumerate(rows):
            if number:
                console.print()
            _print_record(console, list(zip(columns, row, strict=True)))
        return
    table = Table(
        *(
            Column(Text(header, no_wrap=False), no_wrap=True, width=width)  # the header may wrap, never a value
            if is_identifier(column)
            else Column(Text(header), overflow="fold")
            for column, header, width in zip(columns, headers, shortest, strict=True)
        )
    )
    for row in rows:
        table.add_row(*map(Text, row))  # Text: a value is never read as rich markup
    console.print(table)


def print_lines(rows: Sequence[Sequence[str]]) -> None:
    """One line per row, its columns aligned: a summary to scan, not a record to copy from. On a
    terminal the last column is cut to the width (``…``) so each row stays one line; piped, it is
    whole, so ``| grep`` sees everything."""
    console = _console()
    widths = [max(cell_len(row[n]) for row in rows) for n in range(len(rows[0]) - 1)] if rows else []
    for *cells, last in rows:
        line = "  ".join(
            [*(cell + " " * (width - cell_len(cell)) for cell, width in zip(cells, widths, strict=True)), last]
        )
        if console.is_terminal and cell_len(line) > console.width:
            cut = Text(line)
            cut.truncate(console.width, overflow="ellipsis")
            line = cut.plain
        print(line)


def print_secret(secret: str, warning: str) -> None:
    """A secret alone on its line, as plain text: no table or terminal width ever shortens it."""
    print("secret (shown once):")
    print(secret, flush=True)
    print(warning, file=sys.stderr)


def print_sync_report(report: Any) -> None:
    """What ``callbacks sync`` did for one tenant, on one line."""
    if report.error:
        print(f"{report.tenant_id}: FAILED: {report.error}")
        return
    parts = [
        f"{label} {', '.join(map(str, items))}"
        for label, items in (
            ("created", report.created),
            ("resent verification for", report.resent),
            ("replaced", report.replaced),
            ("deleted stale", report.deleted),
            ("retired", report.retired),
        )
        if items
    ]
    print(f"{report.tenant_id}: " + ("; ".join(parts) if parts else f"in sync ({len(report.unchanged)} callbacks)"))


class BackfillProgress:
    """A rich progress bar per tenant and resource, on a terminal only."""

    def __init__(self, *, enabled: bool) -> None:
        self._enabled = enabled
        self._bars: dict[tuple[str, str], Any] = {}
        self._progress: Any = None

    def __enter__(self) -> BackfillProgress:
        if self._enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("pages, {task.fields[emitted]} emitted"),
                transient=False,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, tenant_id: str, resource: str, page: Any, emitted: int) -> None:
        if self._progress is None:
            return
        key = (tenant_id, resource)
        if key not in self._bars:
            self._bars[key] = self._progress.add_task(f"{tenant_id} {resource}", total=max(page.pages, 1), emitted=0)
        self._progress.update(self._bars[key], completed=min(page.page, max(page.pages, 1)), emitted=emitted)


def _console(natural: int | None = None) -> Console:
    """Standard output: the terminal's width, or, piped, ``natural`` (as wide as the content)."""
    console = Console(highlight=False)
    if not console.is_terminal and natural is not None:
        console.width = max(natural, 1)
    return console


def _print_record(console: Console, fields: Sequence[tuple[str, str]]) -> None:
    """``field value`` lines. On a terminal narrower than the longest value but wide enough for the
    identifiers, long values fold under their field; otherwise plain lines, which nothing shortens."""
    if not fields:
        return
    keys = max(cell_len(key) for key, _ in fields)
    values = [_width(value) for _, value in fields]
    ids = max((width for (key, _), width in zip(fields, values, strict=True) if is_identifier(key)), default=0)
    if console.is_terminal and keys + 2 + ids <= console.width < keys + 2 + max(values):
        grid = Table.grid(Column(no_wrap=True, style="bold"), Column(overflow="fold"), padding=(0, 2))
        for key, value in fields:
            grid.add_row(key, Text(value))
        console.print(grid)
        return
    for key, value in fields:
        print(f"{key.ljust(keys)}  {value}".rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(map(str, value))
    if isinstance(value, dict):  # a payload filter: as JSON, ready to paste into --filter
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _width(text: str) -> int:
    return max((cell_len(line) for line in text.splitlines()), default=0)


def _longest_word(text: str) -> int:
    return max((cell_len(word) for word in text.split()), default=0)
