"""Events checked against the published catalogue (:mod:`webhook_service.contract.schemas`).

One place for the check that ``conftest`` runs on every event a test's database holds and every body
its subscriber sink receives, and that ``test_event_catalogue`` runs on the catalogue's examples: a
payload with a field its schema does not list, or without one it does, fails the test that made it.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator

from webhook_service.contract import schemas as catalogue

MARKER = "unvalidated_events"
"""Marks a test that stores malformed payloads on purpose (see pyproject's pytest markers)."""


@cache
def validator(kind: str) -> Draft202012Validator:
    """The schema of ``kind`` as a validator, formats (``uri``) checked too."""
    return Draft202012Validator(catalogue.get(kind).schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def problems(event: Any, kind: str | None = None) -> list[str]:
    """What is wrong with ``event`` as an event of ``kind`` (default: its own ``type``), each naming
    the type and where (``$.data.sequence``); none when it is valid."""
    if not isinstance(event, dict):
        return [f"not a JSON object: {str(event)[:80]}"]
    kind = kind or event.get("type")
    if kind not in catalogue.EVENT_TYPES:
        return [f"{kind!r} is not a type of the event catalogue"]
    found = sorted(validator(kind).iter_errors(event), key=lambda error: list(error.absolute_path))
    return [f"{kind} at {error.json_path}: {_short(error.message)} ({error.validator})" for error in found]


def check(events: dict[str, tuple[str | None, Any]], where: str) -> None:
    """Fail, naming each event that does not match its schema; ``events``: (type or None for the
    event's own, event) by a name for the message (its id, the request)."""
    failures = [f"{name}: {problem}" for name, (kind, event) in events.items() for problem in problems(event, kind)]
    if failures:
        shown = "\n  ".join(failures[:20]) + ("\n  ..." if len(failures) > 20 else "")
        raise AssertionError(
            f"{len(failures)} problem(s) with events {where} against the published schemas "
            f"(webhook_service/contract/schemas.py):\n  {shown}"
        )


def parsed(body: bytes | str) -> Any:
    """A payload or a request body as JSON (what is not JSON shows as the text, which fails the check)."""
    try:
        return json.loads(body)
    except ValueError:
        return body if isinstance(body, str) else body.decode("utf-8", "replace")


def _short(message: str) -> str:
    return message if len(message) <= 200 else message[:200] + "..."
