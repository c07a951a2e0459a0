"""Stable event type names: ``<noun>.created``, ``.updated``, ``.deleted``, other verbs in snake_case.

FreshBooks names verbs in the imperative and in camelCase (``invoice.sendByEmail``); subscribers
get the past tense in snake_case (``invoice.sent_by_email``), the Standard Webhooks convention.
"""

from __future__ import annotations

import re

#: FreshBooks verb → normalized verb, where a rule would get the tense wrong.
KNOWN_VERBS = {
    "create": "created",
    "update": "updated",
    "delete": "deleted",
    "sendByEmail": "sent_by_email",
}
#: Verbs whose events describe a new version of the object (and so go through the version ledger);
#: any other verb is an action and is emitted every time it happens.
VERSION_VERBS = frozenset({"create", "update", "delete"})

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def event_type(freshbooks_name: str) -> str:
    """``invoice.update`` → ``invoice.updated``; ``invoice.sendByEmail`` → ``invoice.sent_by_email``."""
    noun, _, verb = freshbooks_name.partition(".")
    if not noun or not verb:
        raise ValueError(f"not a FreshBooks event name: {freshbooks_name!r}")
    return f"{noun}.{KNOWN_VERBS.get(verb) or _CAMEL.sub('_', verb).lower()}"


def split_name(freshbooks_name: str) -> tuple[str, str]:
    noun, _, verb = freshbooks_name.partition(".")
    return noun, verb
