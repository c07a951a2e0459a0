"""Payload filters: which of the events its type patterns choose a subscription is sent, by content.

A filter is judged against the event's whole body, the JSON document a subscriber receives
(``{"id", "type", "timestamp", "data": {...}}``). Rules, exactly:

- **Filter.** A JSON object whose entries must all hold (``{}`` matches everything). An entry is
  ``"$and": [filter, ...]`` (all hold) or ``"$or": [filter, ...]`` (at least one holds), each a
  non-empty list; ``"$not": filter`` (the filter does not hold); or ``"<path>": condition``.
- **Path.** Dot-separated segments of ``[A-Za-z0-9_]+``. Each segment walks an object by key; a
  segment of digits also indexes a list by its decimal value (``lines.0.amount``; ``01`` is index
  1). A path that cannot be walked (a missing key, an index out of range, a step into anything
  else) means the field is *absent*; ``null`` is present.
- **Condition.** A non-empty object whose keys all start with ``$`` is an operator object: each
  operator must hold. Any other JSON value ``v`` (``{}`` and objects without ``$`` keys included)
  means ``{"$eq": v}``. An object mixing ``$`` keys and other keys is refused; to compare with one,
  write ``{"$eq": {...}}``.
- ``$eq v``: present and equal, by JSON equality: a boolean never equals a number (``true`` is not
  ``1``), ``1`` equals ``1.0``, lists and objects are compared element by element and key by key.
  ``$ne v``: not ``$eq`` (an absent field matches). ``$in [v, ...]``: present and equal to an
  element; ``$nin``: not ``$in`` (an absent field matches).
- ``$gt``, ``$gte``, ``$lt``, ``$lte``: the operand is a number or a string. True only when the
  field is present and comparable: two numbers (booleans are not numbers) compare by value, two
  strings by code point, and a string of the form ``-?[0-9]+(\\.[0-9]+)?`` (FreshBooks sends money
  as ``"254.75"``) compares with a number operand as a :class:`~decimal.Decimal`, exactly, the
  operand taken as written (``0.1`` is one tenth). Anything else is false (the string ``"10"``
  against the string operand ``"9"`` compares as text; a number against a string operand is false).
- ``$exists true|false``: the field is present (absent). ``"$not": condition`` inside an operator
  object negates the condition (``{"$not": {"$gt": 5}}`` matches an absent field).

Refused with :class:`FilterError`, its message naming where (``filter.$or[1].data.status``) and what:
anything above broken, an operand of the wrong type, an unknown operator, a filter or condition
nested more than 8 levels deep (each ``$and``, ``$or`` and ``$not`` is a level) or an operand value
nested more than 8 levels, more than 100 conditions (each operator on a path, an implicit ``$eq``
included), and a filter over 4096 bytes as compact UTF-8 JSON.

Validation happens once, when a subscription is saved (:func:`canonical` gives the text stored);
fan-out runs :func:`from_json` on that text for every event, so it compiles each distinct filter
once into closures and the per-event cost is the walk of the paths it names.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from functools import lru_cache
from typing import Any

__all__ = ["FilterError", "Predicate", "canonical", "compile_filter", "from_json"]

Predicate = Callable[[Mapping[str, Any]], bool]
Test = Callable[[Any], bool]
"""A compiled filter (on the document) or condition (on a field's value, :data:`ABSENT` if none)."""

MAX_DEPTH = 8
MAX_CONDITIONS = 100
MAX_BYTES = 4096
FIELD_OPERATORS = ("$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte", "$exists", "$not")
FILTER_OPERATORS = ("$and", "$or", "$not")
_KNOWN = ", ".join(dict.fromkeys(FIELD_OPERATORS + FILTER_OPERATORS))
_ORDER = {"$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt, "$lte": operator.le}
_PATH = re.compile(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*")
_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


class FilterError(ValueError):
    """A filter that cannot be used; the message names where and what (shown to the caller)."""


ABSENT: Any = type("Absent", (), {"__repr__": lambda self: "ABSENT"})()
"""The value of a field a path does not reach (unlike JSON ``null``)."""


def compile_filter(spec: Any) -> Predicate:
    """``spec`` checked against every rule above, then compiled into a predicate on documents."""
    return _checked(spec)[0]


def canonical(spec: Any) -> str:
    """The compact JSON stored for ``spec`` (keys sorted, so equal filters are stored alike)."""
    return _checked(spec)[1]


@lru_cache(maxsize=1024)
def from_json(text: str) -> Predicate:
    """The predicate of a stored filter (as :func:`canonical` wrote it), compiled once per text."""
    try:
        spec = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise FilterError(f"filter: not JSON ({exc})") from None
    return compile_filter(spec)


def _checked(spec: Any) -> tuple[Predicate, str]:
    if not isinstance(spec, dict):
        raise FilterError(f"filter: must be a JSON object, not {_kind(spec)}")
    predicate = _Compiler().filter(spec, "filter", 0)
    try:
        text = json.dumps(spec, separators=(",", ":"), ensure_ascii=False, sort_keys=True, allow_nan=False)
        size = len(text.encode())
    except UnicodeEncodeError:
        raise FilterError("filter: a string holds an unpaired surrogate, which is not Unicode text") from None
    except ValueError:  # an integer of more digits than Python writes (and far more than fit)
        raise FilterError(f"filter: larger than {MAX_BYTES} bytes as compact JSON") from None
    if size > MAX_BYTES:
        raise FilterError(f"filter: {size} bytes as compact JSON; at most {MAX_BYTES}")
    return predicate, text


class _Compiler:
    """One filter's validation and compilation in a single walk; ``where`` is the location so far."""

    def __init__(self) -> None:
        self.conditions = 0

    def filter(self, spec: Any, where: str, depth: int) -> Test:
        if not isinstance(spec, dict):
            raise FilterError(f"{where}: a filter must be a JSON object, not {_kind(spec)}")
        tests: list[Test] = []
        for key, value in spec.items():
            if not isinstance(key, str):
                raise FilterError(f"{where}: keys must be strings, not {_kind(key)}")
            if key in ("$and", "$or"):
                if not isinstance(value, list) or not value:
                    raise FilterError(f"{where}: {key} needs a non-empty list of filters, not {_kind(value)}")
                inner = self._deeper(depth, f"{where}.{key}")
                parts = [self.filter(item, f"{where}.{key}[{n}]", inner) for n, item in enumerate(value)]
                tests.append(_every(parts) if key == "$and" else _some(parts))
            elif key == "$not":
                tests.append(_negated(self.filter(value, f"{where}.$not", self._deeper(depth, f"{where}.$not"))))
            elif key.startswith("$"):
                raise FilterError(f"{where}: {_misplaced(key)}")
            elif not _PATH.fullmatch(key):
                raise FilterError(
                    f"{where}: {_shown(key)} is not a path (dot-separated names of letters, digits and _)"
                )
            else:
                tests.append(_on_field(_getter(key), self.condition(value, f"{where}.{key}", depth)))
        return _every(tests)

    def condition(self, spec: Any, where: str, depth: int) -> Test:
        if isinstance(spec, dict) and spec:
            operators = [key for key in spec if isinstance(key, str) and key.startswith("$")]
            if len(operators) == len(spec):
                return _every([self.operator(op, operand, where, depth) for op, operand in spec.items()])
            if operators:
                others = ", ".join(_shown(key) for key in spec if key not in operators)
                raise FilterError(
                    f"{where}: mixes operators ({', '.join(operators)}) with other keys ({others}); "
                    'to compare with such an object write {"$eq": {...}}'
                )
        return self.operator("$eq", spec, where, depth)

    def operator(self, op: str, operand: Any, where: str, depth: int) -> Test:
        if op == "$not":
            return _negated(self.condition(operand, f"{where}.$not", self._deeper(depth, f"{where}.$not")))
        if op not in FIELD_OPERATORS:
            raise FilterError(f"{where}: {_misplaced(op)}")
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            raise FilterError(f"filter: more than {MAX_CONDITIONS} conditions (each operator on a path counts)")
        if op in ("$eq", "$ne"):
            equal = _equal_to(_value(operand, where, op))
            return equal if op == "$eq" else _negated(equal)
        if op in ("$in", "$nin"):
            if not isinstance(operand, list):
                raise FilterError(f"{where}: {op} needs a list, not {_kind(operand)}")
            member = _member_of([_value(item, where, op) for item in operand])
            return member if op == "$in" else _negated(member)
        if op == "$exists":
            if not isinstance(operand, bool):
                raise FilterError(f"{where}: $exists needs true or false, not {_kind(operand)}")
            return (lambda value: value is not ABSENT) if operand else (lambda value: value is ABSENT)
        if not _is_finite_number(operand) and not isinstance(operand, str):
            raise FilterError(f"{where}: {op} needs a number or a string, not {_kind(operand)}")
        return _ordered(_ORDER[op], operand)

    @staticmethod
    def _deeper(depth: int, where: str) -> int:
        if depth >= MAX_DEPTH:
            raise FilterError(f"{where}: nested more than {MAX_DEPTH} levels deep")
        return depth + 1


# --- compiled pieces ---------------------------------------------------------------------------


def _getter(path: str) -> Callable[[Any], Any]:
    """The field at ``path`` of a document, or :data:`ABSENT`."""
    steps = tuple((key, _index(key)) for key in path.split("."))

    def get(node: Any) -> Any:
        for key, index in steps:
            if type(node) is dict or isinstance(node, Mapping):
                node = node.get(key, ABSENT)
                if node is ABSENT:
                    return ABSENT
            elif index >= 0 and isinstance(node, list | tuple):
                if index >= len(node):
                    return ABSENT
                node = node[index]
            else:
                return ABSENT
        return node

    return get


def _index(key: str) -> int:
    """The list index a segment of digits names (-1 for another segment); past 18 significant
    digits, one beyond any list's end (and no int() of thousands of digits)."""
    if not key.isdigit():
        return -1
    digits = key.lstrip("0")
    return int(digits or "0") if len(digits) < 19 else 1 << 62


def _on_field(get: Callable[[Any], Any], test: Test) -> Test:
    return lambda document: test(get(document))


def _every(tests: list[Test]) -> Test:
    if len(tests) == 1:
        return tests[0]
    frozen = tuple(tests)

    def every(value: Any) -> bool:
        return all(test(value) for test in frozen)

    return every


def _some(tests: list[Test]) -> Test:
    if len(tests) == 1:
        return tests[0]
    frozen = tuple(tests)

    def some(value: Any) -> bool:
        return any(test(value) for test in frozen)

    return some


def _negated(test: Test) -> Test:
    return lambda value: not test(value)


def _equal_to(expected: Any) -> Test:
    """JSON equality with ``expected``, specialised for the scalar cases."""
    if expected is None:
        return lambda value: value is None
    if isinstance(expected, bool):
        return lambda value: isinstance(value, bool) and value == expected
    if isinstance(expected, int | float):
        return lambda value: _is_number(value) and value == expected
    if isinstance(expected, str):
        return lambda value: isinstance(value, str) and value == expected
    return lambda value: _json_equal(value, expected)


def _json_equal(value: Any, expected: Any) -> bool:
    """Recursion ends within ``expected``'s depth, which validation keeps at most 8."""
    if isinstance(expected, dict):
        return (
            isinstance(value, Mapping)
            and len(value) == len(expected)
            and all(key in value and _json_equal(value[key], item) for key, item in expected.items())
        )
    if isinstance(expected, list):
        return (
            isinstance(value, list | tuple)
            and len(value) == len(expected)
            and all(_json_equal(mine, theirs) for mine, theirs in zip(value, expected, strict=True))
        )
    key = _key(value)
    return key is not None and key == _key(expected)


def _key(value: Any) -> tuple[int, Any] | None:
    """A hashable stand-in equal exactly where the JSON scalars are (True is not 1), or None."""
    if value is None:
        return (0, None)
    if isinstance(value, bool):
        return (1, bool(value))
    if isinstance(value, int):
        return (2, int(value))
    if isinstance(value, float):
        return (2, float(value))
    if isinstance(value, str):
        return (3, str.__str__(value))
    return None


def _member_of(items: list[Any]) -> Test:
    """``$in``: a set lookup for scalar elements, a scan of the (few) list and object ones."""
    scalars = {key for item in items if (key := _key(item)) is not None}
    containers = tuple(item for item in items if isinstance(item, dict | list))

    def member(value: Any) -> bool:
        key = _key(value)
        if key is not None:
            return key in scalars
        return any(_json_equal(value, item) for item in containers)

    return member


def _ordered(compare: Callable[[Any, Any], bool], limit: float | str) -> Test:
    if isinstance(limit, str):
        return lambda value: isinstance(value, str) and compare(value, limit)
    exact = Decimal(repr(limit)) if isinstance(limit, float) else Decimal(limit)

    def test(value: Any) -> bool:
        if _is_number(value):
            return bool(compare(value, limit))
        if isinstance(value, str) and _DECIMAL.fullmatch(value):
            return bool(compare(Decimal(value), exact))
        return False

    return test


# --- validation helpers ------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    return _is_number(value) and (isinstance(value, int) or math.isfinite(value))


def _value(operand: Any, where: str, op: str) -> Any:
    """``operand``, copied, if it is a JSON value nested at most :data:`MAX_DEPTH` levels (checked
    without recursion, so no input can exhaust the stack)."""
    pending: list[tuple[Any, int]] = [(operand, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                raise FilterError(f"{where}: the {op} operand is nested more than {MAX_DEPTH} levels deep")
            if isinstance(item, dict):
                if not all(isinstance(key, str) for key in item):
                    raise FilterError(f"{where}: the {op} operand has an object key that is not a string")
                pending.extend((child, depth + 1) for child in item.values())
            else:
                pending.extend((child, depth + 1) for child in item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise FilterError(f"{where}: the {op} operand holds {item}, which is not a JSON number")
        elif item is not None and not isinstance(item, bool | int | float | str):
            raise FilterError(f"{where}: the {op} operand holds {_kind(item)}, which is not a JSON value")
    return _copied(operand)


def _copied(value: Any) -> Any:
    """A copy of a checked operand: the predicate must not change when the caller's spec does."""
    if isinstance(value, dict):
        return {key: _copied(item) for key, item in value.items()}
    return [_copied(item) for item in value] if isinstance(value, list) else value


def _misplaced(op: str) -> str:
    if op in FIELD_OPERATORS:
        return f'{op} is a condition on a field: write {{"<path>": {{"{op}": ...}}}}'
    if op in FILTER_OPERATORS:
        return f'{op} combines filters: write {{"{op}": [{{"<path>": ...}}, ...]}} beside the paths'
    return f"unknown operator {_shown(op, quote=False)} (known: {_KNOWN})"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "an empty string" if not value else "a string"
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _shown(value: Any, *, quote: bool = True) -> str:
    """``value`` for a message (quoted, or anything not a string as its repr), cut to a readable length."""
    text = repr(value) if quote or not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."
