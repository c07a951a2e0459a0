"""In-memory objects per business and resource.

Not thread-safe by itself (``SimulatorState`` holds the lock). Stored dicts
are copy-on-write: an update replaces a record's dict instead of mutating it,
so a response being serialized on the server thread never sees a dict change
under it, and readers need only shallow copies.

Ids are per business and per resource, and every business starts each
resource at the same number. That is harsher than a global sequence: two
tenants really do have an invoice with the same id, so a service keying
objects by id alone collides.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from .catalog import ResourceSpec
from .clock import eastern_date
from .factory import BuildContext, ObjectFactory, apply_timestamps
from .identity import Business

ID_BASE: dict[str, int] = {
    "invoice": 100_001,
    "client": 200_001,
    "expense": 300_001,
    "payment": 400_001,
    "estimate": 500_001,
    "item": 600_001,
    "credit_note": 700_001,
    "tax": 800_001,
    "bill": 900_001,
    "bill_vendor": 1_000_001,
    "category": 1_100_001,
    "recurring": 1_200_001,
    "project": 1_300_001,
    "time_entry": 1_400_001,
    "service": 1_500_001,
}


def clone(value: Any) -> Any:
    """Deep copy of JSON-like data, several times faster than ``deepcopy``."""
    if isinstance(value, dict):
        return {k: clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clone(v) for v in value]
    return value


@dataclass(slots=True)
class Record:
    """One stored object; ``data`` is the full object, lines included."""

    data: dict[str, Any]
    created: datetime
    updated: datetime


class ObjectStore:
    """Objects keyed by (business id, resource name) then object id."""

    def __init__(self, factory: ObjectFactory) -> None:
        self.factory = factory
        self._tables: dict[tuple[int, str], dict[int, Record]] = {}
        self._next_id: dict[tuple[int, str], int] = {}

    def _table(self, spec: ResourceSpec, business: Business) -> dict[int, Record]:
        return self._tables.setdefault((business.id, spec.name), {})

    def _ids(self, business: Business, resource: str) -> list[int]:
        return list(self._tables.get((business.id, resource), {}))

    def _allocate(self, spec: ResourceSpec, business: Business) -> int:
        key = (business.id, spec.name)
        oid = self._next_id.get(key, ID_BASE[spec.name])
        self._next_id[key] = oid + 1
        return oid

    def _context(self, business: Business) -> BuildContext:
        return BuildContext(
            business, self._ids(business, "client"), self._ids(business, "project"), self._ids(business, "service")
        )

    @staticmethod
    def _check_fields(spec: ResourceSpec, fields: dict[str, Any]) -> None:
        for key in ("id", spec.id_key):
            if key and key in fields:
                raise ValueError(f"{key!r} is assigned by the simulator and cannot be set")

    def create(
        self, spec: ResourceSpec, business: Business, now: datetime, fields: dict[str, Any] | None = None
    ) -> Record:
        """A new object stamped ``now``, with ``fields`` laid over the defaults."""
        fields = clone(fields or {})
        self._check_fields(spec, fields)
        oid = self._allocate(spec, business)
        data = self.factory.build(spec, oid, now, self._context(business))
        data.update(fields)
        apply_timestamps(spec, data, now, now)
        record = Record(data, now, now)
        self._table(spec, business)[oid] = record
        return record

    def seed(self, spec: ResourceSpec, business: Business, now: datetime, count: int) -> list[Record]:
        """``count`` objects created and updated at seeded times in the last 60 days."""
        rng = self.factory.rng
        table = self._table(spec, business)
        ctx = self._context(business)
        records: list[Record] = []
        for _ in range(count):
            oid = self._allocate(spec, business)
            age = rng.randint(3600, 60 * 86400)
            created = now - timedelta(seconds=age)
            updated = created + timedelta(seconds=rng.randint(0, age))
            data = self.factory.build(spec, oid, created, ctx)
            apply_timestamps(spec, data, created, updated)
            record = Record(data, created, updated)
            table[oid] = record
            records.append(record)
            if spec.name == "client":
                ctx.client_ids.append(oid)
        return records

    def get(self, spec: ResourceSpec, business: Business, object_id: int) -> Record | None:
        return self._tables.get((business.id, spec.name), {}).get(object_id)

    def _require(self, spec: ResourceSpec, business: Business, object_id: int) -> Record:
        record = self.get(spec, business, object_id)
        if record is None:
            raise KeyError(f"no {spec.name} {object_id} in business {business.id}")
        return record

    def update(
        self, spec: ResourceSpec, business: Business, object_id: int, now: datetime, fields: dict[str, Any] | None
    ) -> Record:
        """Lay ``fields`` over the object and bump its updated timestamp."""
        fields = clone(fields or {})
        self._check_fields(spec, fields)
        old = self._require(spec, business, object_id)
        data = {**old.data, **fields}  # copy-on-write: the old dict is never mutated
        apply_timestamps(spec, data, old.created, now)
        record = Record(data, old.created, now)
        self._table(spec, business)[object_id] = record
        return record

    def remove(self, spec: ResourceSpec, business: Business, object_id: int) -> Record:
        """Hard delete (projects family): later reads are 404."""
        self._require(spec, business, object_id)
        return self._table(spec, business).pop(object_id)

    def query(
        self,
        spec: ResourceSpec,
        business: Business,
        *,
        vis_state: int | None = None,
        day_min: date | None = None,
        day_max: date | None = None,
        since: datetime | None = None,
    ) -> list[Record]:
        """Records in id order matching the filters the resource honours."""
        records: Iterable[Record] = self._tables.get((business.id, spec.name), {}).values()
        if vis_state is not None:
            records = [r for r in records if r.data.get("vis_state") == vis_state]
        if spec.honours_updated_filters:
            if day_min is not None:
                records = [r for r in records if eastern_date(r.updated) >= day_min]
            if day_max is not None:
                records = [r for r in records if eastern_date(r.updated) <= day_max]
            if since is not None:
                records = [r for r in records if r.updated >= since]
        return sorted(records, key=lambda r: r.data["id"])
