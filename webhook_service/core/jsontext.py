"""Compact JSON text, written fast: what the service stores and digests on every event.

orjson writes the same compact UTF-8 text as the standard library's ``json.dumps`` with
``separators=(",", ":")`` and ``ensure_ascii=False`` (``sort_keys`` likewise), about 15 times
faster. It refuses what the standard library takes (an integer beyond 64 bits, a key that is not
a string): those go the standard library's way, so one value always gets one text.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson


def compact(value: Any, *, sort_keys: bool = False, default: Callable[[Any], Any] | None = None) -> bytes:
    """``value`` as compact UTF-8 JSON; ``default`` turns what JSON has no type for into something it has."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else None, default=default)
    except orjson.JSONEncodeError:
        text = json.dumps(value, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False, default=default)
        return text.encode("utf-8")
