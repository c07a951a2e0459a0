"""Realistic, deterministic FreshBooks objects.

Values come from the state's seeded ``random.Random`` so a test that seeds
the same things in the same order sees the same objects. Money is built from
integer cents (fast, exact) and rendered as FreshBooks' decimal strings.
Seeding thousands of objects must stay cheap, hence plain dicts and no
per-object ``Decimal`` or ``deepcopy`` work.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from .catalog import ResourceSpec
from .clock import eastern_date, eastern_naive, iso_utc, utc_naive
from .identity import Business

Builder = Callable[["ObjectFactory", int, datetime, "BuildContext"], dict[str, Any]]

FIRST = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Margaret", "Ken", "Radia", "Linus")
LAST = ("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Hamilton", "Thompson", "Perlman")
ORGS = ("Acme Corp", "Globex", "Initech", "Umbrella LLC", "Hooli", "Stark Industries", "Wayne Enterprises")
ITEMS = ("Consulting", "Design", "Development", "Support plan", "Hosting", "Training", "Audit", "Widgets")
CATEGORIES = ("Advertising", "Car & Truck Expenses", "Meals", "Office Supplies", "Rent", "Travel", "Utilities")
VENDORS = ("Staples", "Amazon", "Delta Air Lines", "Comcast", "WeWork", "Shell")
INVOICE_STATES = ((1, "draft"), (2, "sent"), (3, "viewed"), (4, "paid"), (8, "partial"))


def money(cents: int, code: str = "USD") -> dict[str, str]:
    """FreshBooks money: ``{"amount": "125.50", "code": "USD"}``."""
    sign = "-" if cents < 0 else ""
    cents = abs(cents)
    return {"amount": f"{sign}{cents // 100}.{cents % 100:02d}", "code": code}


class BuildContext:
    """What a builder may reference: the business and its existing clients."""

    __slots__ = ("business", "client_ids", "project_ids", "service_ids")

    def __init__(
        self, business: Business, client_ids: list[int], project_ids: list[int], service_ids: list[int]
    ) -> None:
        self.business = business
        self.client_ids = client_ids
        self.project_ids = project_ids
        self.service_ids = service_ids


class ObjectFactory:
    """Builds one object of a resource; timestamps are applied separately."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    # -- shared pieces -------------------------------------------------------

    def _client_id(self, ctx: BuildContext) -> int:
        return self.rng.choice(ctx.client_ids) if ctx.client_ids else self.rng.randint(1000, 9999)

    def lines(self, owner_key: str | None, owner_id: int) -> tuple[list[dict[str, Any]], int]:
        """1-3 invoice-style lines and their total in cents."""
        rng = self.rng
        lines: list[dict[str, Any]] = []
        total = 0
        for lineid in range(1, rng.randint(1, 3) + 1):
            qty = rng.randint(1, 5)
            unit = rng.randrange(500, 50_000, 25)
            total += qty * unit
            line: dict[str, Any] = {
                "lineid": lineid,
                "name": rng.choice(ITEMS),
                "description": "",
                "qty": str(qty),
                "unit_cost": money(unit),
                "amount": money(qty * unit),
                "taxName1": "",
                "taxAmount1": "0",
                "type": 0,
            }
            if owner_key:
                line[owner_key] = owner_id
            lines.append(line)
        return lines, total

    def build(self, spec: ResourceSpec, object_id: int, created: datetime, ctx: BuildContext) -> dict[str, Any]:
        """A full object (lines included where the resource has them)."""
        return BUILDERS[spec.name](self, object_id, created, ctx)


# -- accounting builders ---------------------------------------------------------


def _person(f: ObjectFactory) -> dict[str, str]:
    first, last = f.rng.choice(FIRST), f.rng.choice(LAST)
    return {"fname": first, "lname": last, "organization": f.rng.choice(ORGS)}


def _invoice_like(f: ObjectFactory, oid: int, created: datetime, ctx: BuildContext, kind: str) -> dict[str, Any]:
    key = {"invoice": "invoiceid", "estimate": "estimateid", "credit_note": "creditid"}[kind]
    lines, total = f.lines(key, oid)
    status, v3 = f.rng.choice(INVOICE_STATES) if kind == "invoice" else (2, "sent")
    outstanding = 0 if v3 == "paid" else (total // 2 if v3 == "partial" else total)
    day = eastern_date(created)
    obj: dict[str, Any] = {"id": oid, key: oid, "accountid": ctx.business.account_id, "customerid": f._client_id(ctx)}
    obj |= _person(f)
    number_key = {"invoice": "invoice_number", "estimate": "estimate_number", "credit_note": "credit_number"}[kind]
    obj |= {
        number_key: f"{oid:07d}",
        "create_date": day.isoformat(),
        "status": status,
        "v3_status": v3,
        "amount": money(total),
        "currency_code": "USD",
        "language": "en",
        "notes": "",
        "terms": "",
        "vis_state": 0,
        "lines": lines,
    }
    if kind == "invoice":
        obj["due_date"] = (day + timedelta(days=30)).isoformat()
        obj["outstanding"] = money(outstanding)
        obj["paid"] = money(total - outstanding)
        obj["payment_status"] = {"paid": "paid", "partial": "partial"}.get(v3, "unpaid")
    return obj


def _client(f: ObjectFactory, oid: int, created: datetime, ctx: BuildContext) -> dict[str, Any]:
    person = _person(f)
    return {
        "id": oid,
        "userid": oid,
        **person,
        "email": f"{person['fname'].lower()}.{person['lname'].lower()}{oid}@example.com",
        "currency_code": "USD",
        "language": "en",
        "mob_phone": "",
        "bus_phone": "",
        "p_city": "Toronto",
        "p_country": "Canada",
        "vis_state": 0,
    }


def _expense(f: ObjectFactory, oid: int, created: datetime, ctx: BuildContext) -> dict[str, Any]:
    return {
        "id": oid,
        "expenseid": oid,
        "amount": money(f.rng.randrange(100, 200_000)),
        "categoryid": f.rng.randint(3_000_000, 3_000_050),
        "vendor": f.rng.choice(VENDORS),
        "date": eastern_date(created).isoformat(),
        "notes": "",
        "staffid": 1,
        "clientid": f._client_id(ctx),
        "status": 0,
        "vis_state": 0,
    }


def _payment(f: ObjectFactory, oid: int, created: datetime, ctx: BuildContext) -> dict[str, Any]:
    return {
        "id": oid,
        "logid": oid,
        "invoiceid": f.rng.randint(100, 99_999),
        "clientid": f._client_id(ctx),
        "amount": money(f.rng.randrange(500, 100_000)),
        "date": eastern_date(created).isoformat(),
        "type": f.rng.choice(("Check", "Credit Card", "Cash", "Bank Transfer")),
        "note": "",
        "vis_state": 0,
    }


def _item(f: ObjectFactory, oid: int, created: datetime, ctx: BuildContext) -> dict[str, Any]:
    return {
        "id": oid,
        "itemid": oid,
        "name": f"{f.rng.choice(ITEMS)} {oid}",
        "description": "",
        "qty": str(f.rng.randint(0, 50)),
        "inventory": None,
        "unit_cost": money(f.rng.randrange(500, 50_000, 25)),
        "vis_state": 0,
    }


def _tax(f: ObjectFactory, oid: int, created: datetime, ctx: BuildContext) -> dict[str, Any]:
    name, rate = f.rng.choice((("HST", "13"), ("GST", "5"), ("PST", "7"), ("VAT", "20")))
    return {"id": oid, "taxid": oid, "name": name, "amount": rate, "number": None, "compound": False, "vis_state": 0}


def _bill(f: ObjectFactory, oid: int, created: datetime, ctx: BuildContext) -> dict[str, Any]:
    lines, total = f.lines(None, oid)
    day = eastern_date(created)
    return {
        "id": oid,
        "bill_number": f"B-{oid:05d}",
        "vendorid": f.rng.randint(1, 500),
        "issue_date": day.isoformat(),
        "due_date": (day + timedelta(days=30)).isoformat(),
        "amount": money(total),
        "outstanding": money(total),
        "paid": money(0),
        "currency_code": "USD",
        "status": "unpaid",
        "vis_state": 0,
        "lines": lines,
    }


def _bill_vendor(f: ObjectFactory, oid: int, created: datetime, ctx: BuildContext) -> dict[str, Any]:
    return {
        "id": oid,
        "vendorid": oid,
        "vendor_name": f"{f.rng.choice(VENDORS)} #{oid}",
        "currency_code": "USD",
        "language": "en",
        "vis_state": 0,
    }


def _category(f: ObjectFactory, oid: int, created: datetime, ctx: BuildContext) -> dict[str, Any]:
    return {
        "id": oid,
        "categoryid": oid,
        "category": f.rng.choice(CATEGORIES),
        "is_cogs": False,
        "is_editable": True,
        "parentid": None,
        "vis_state": 0,
    }


def _recurring(f: ObjectFactory, oid: int, created: datetime, ctx: BuildContext) -> dict[str, Any]:
    lines, total = f.lines("profileid", oid)
    return {
        "id": oid,
        "profileid": oid,
        "customerid": f._client_id(ctx),
        **_person(f),
        "frequency": f.rng.choice(("w", "2w", "m", "y")),
        "numberRecurring": 0,
        "occurrences_to_date": f.rng.randint(0, 12),
        "amount": money(total),
        "currency_code": "USD",
        "create_date": eastern_date(created).isoformat(),
        "vis_state": 0,
        "lines": lines,
    }


# -- projects family builders ------------------------------------------------------


def _project(f: ObjectFactory, oid: int, created: datetime, ctx: BuildContext) -> dict[str, Any]:
    return {
        "id": oid,
        "title": f"{f.rng.choice(ITEMS)} project {oid}",
        "description": "",
        "due_date": None,
        "client_id": f._client_id(ctx),
        "internal": False,
        "budget": None,
        "fixed_price": None,
        "rate": None,
        "billing_method": "project_rate",
        "project_type": "hourly_rate",
        "project_manager_id": None,
        "active": True,
        "complete": False,
        "sample": False,
        "logged_duration": f.rng.randint(0, 360_000),
        "services": [],
    }


def _time_entry(f: ObjectFactory, oid: int, created: datetime, ctx: BuildContext) -> dict[str, Any]:
    duration = f.rng.randrange(900, 28_800, 300)
    return {
        "id": oid,
        "identity_id": 12345,
        "is_logged": True,
        "started_at": iso_utc(created - timedelta(seconds=duration), suffix_z=True),
        "client_id": f._client_id(ctx),
        "project_id": f.rng.choice(ctx.project_ids) if ctx.project_ids else None,
        "service_id": f.rng.choice(ctx.service_ids) if ctx.service_ids else None,
        "task_id": None,
        "pending_client": None,
        "pending_project": None,
        "pending_task": None,
        "note": "",
        "active": True,
        "billable": True,
        "billed": False,
        "internal": False,
        "retainer_id": None,
        "duration": duration,
        "timer": None,
    }


def _service(f: ObjectFactory, oid: int, created: datetime, ctx: BuildContext) -> dict[str, Any]:
    return {
        "id": oid,
        "business_id": ctx.business.id,
        "name": f"{f.rng.choice(ITEMS)} {oid}",
        "billable": True,
        "project_default": False,
        "vis_state": 0,
    }


BUILDERS: dict[str, Builder] = {
    "invoice": lambda f, i, c, x: _invoice_like(f, i, c, x, "invoice"),
    "estimate": lambda f, i, c, x: _invoice_like(f, i, c, x, "estimate"),
    "credit_note": lambda f, i, c, x: _invoice_like(f, i, c, x, "credit_note"),
    "client": _client,
    "expense": _expense,
    "payment": _payment,
    "item": _item,
    "tax": _tax,
    "bill": _bill,
    "bill_vendor": _bill_vendor,
    "category": _category,
    "recurring": _recurring,
    "project": _project,
    "time_entry": _time_entry,
    "service": _service,
}


def apply_timestamps(spec: ResourceSpec, obj: dict[str, Any], created: datetime, updated: datetime) -> None:
    """Render the resource's timestamp fields in its family's convention.

    Accounting: zone-less US/Eastern ``created_at`` and ``updated`` (client
    ``signup_date`` zone-less UTC). Projects: ISO UTC without ``Z``. Time
    entries: ISO UTC with ``Z``. Services: no timestamps at all.
    """
    if spec.family == "accounting":
        obj["created_at"] = eastern_naive(created)
        obj["updated"] = eastern_naive(updated)
        if spec.name == "client":
            obj["signup_date"] = utc_naive(created)
    elif spec.name == "project":
        obj["created_at"] = iso_utc(created, suffix_z=False)
        obj["updated_at"] = iso_utc(updated, suffix_z=False)
    elif spec.name == "time_entry":
        obj["created_at"] = iso_utc(created, suffix_z=True)
        obj["updated_at"] = iso_utc(updated, suffix_z=True)
