"""Regenerate README.md's table of event types from the catalogue (webhook_service.contract.schemas).

    .venv/bin/python scripts/event_types_readme.py          # rewrite the table in README.md
    .venv/bin/python scripts/event_types_readme.py --check  # exit 1 if it is not what this makes

The table sits between ``<!-- event-types:begin -->`` and ``<!-- event-types:end -->``;
tests/test_event_catalogue.py fails when it differs from what :func:`render` makes, so the README
cannot drift from the schemas subscribers are served.
"""

from __future__ import annotations

import sys
from pathlib import Path

from webhook_service.contract.schemas import EVENT_TYPES

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- event-types:begin -->", "<!-- event-types:end -->"


def table() -> str:
    """The Markdown table: type | origin | description, in catalogue order."""
    rows = [f"| `{kind.type}` | {kind.origin} | {_cell(kind.description)} |" for kind in EVENT_TYPES.values()]
    return "\n".join(["| type | origin | description |", "|---|---|---|", *rows])


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a pipe would end the cell


def render(readme: str) -> str:
    """``readme`` with the text between the markers replaced by :func:`table`."""
    head, begin, rest = readme.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"README.md lacks the markers {BEGIN} and {END}")
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


def main(argv: list[str]) -> int:
    current = README.read_text(encoding="utf-8")
    wanted = render(current)
    if "--check" in argv:
        return int(current != wanted)
    if current != wanted:
        README.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
