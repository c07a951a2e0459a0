"""What the service knows about each FreshBooks resource, in one table.

FreshBooks addresses a business three ways (``account_id`` for accounting and events,
``business_id`` for projects/time tracking/services, ``business_uuid`` for the newest accounting
endpoints) and answers a wrong one with a bare 404. Each :class:`Resource` names the identifier its
paths take, so the client fills it in and no caller can pick the wrong one.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Protocol
from urllib.parse import urlencode

from webhook_service.config import ConfigurationError
from webhook_service.freshbooks.timestamps import EASTERN, eastern_date, isoformat_utc, parse_timestamp


class BusinessRef(Protocol):
    """What the catalogue needs of a tenant: its three identifiers."""

    account_id: str
    business_id: int
    business_uuid: str | None


class IdKind(enum.StrEnum):
    ACCOUNT_ID = "account_id"
    BUSINESS_ID = "business_id"
    BUSINESS_UUID = "business_uuid"


class Envelope(enum.StrEnum):
    """How a response is wrapped and where its page metadata sits."""

    #: ``{"response": {"result": {"invoices": [...], "page", "pages", "per_page", "total"}}}``
    ACCOUNTING = "accounting"
    #: ``{"projects": [...], "meta": {"page", "pages", "per_page", "total"}}``
    META = "meta"


class UpdatedFilter(enum.StrEnum):
    #: ``search[updated_min]=YYYY-MM-DD``: a US/Eastern calendar day, inclusive.
    EASTERN_DAY = "eastern_day"
    #: ``updated_since=<UTC ISO 8601>``.
    UTC_SINCE = "utc_since"
    #: No server-side filter; every object is listed.
    NONE = "none"


class UnknownResource(KeyError):
    def __str__(self) -> str:
        return f"unknown FreshBooks resource {self.args[0]!r}; known: {', '.join(sorted(CATALOGUE))}"


class MissingIdentifier(ValueError):
    """The tenant lacks the identifier this resource is addressed by."""


@dataclass(frozen=True)
class Resource:
    name: str
    """The event noun (``invoice``, ``time_entry``): the key everywhere in the service."""
    list_path: str
    """Path template of the list endpoint; ``{account_id}``/``{business_id}``/``{business_uuid}``."""
    item_path: str
    """Path template of one object; also takes ``{id}``."""
    id_kind: IdKind
    singular: str
    plural: str
    envelope: Envelope
    includes: tuple[str, ...] = ()
    zone: tzinfo = EASTERN
    """Zone of this resource's zone-less timestamps."""
    updated_field: str | None = "updated"
    updated_filter: UpdatedFilter = UpdatedFilter.EASTERN_DAY
    timestamp_fields: Mapping[str, tzinfo] = field(default_factory=dict)
    """Every timestamp field of the object and the zone it is written in when zone-less."""
    volatile_fields: frozenset[str] = frozenset()
    """Fields that can change while the object does not (or differ between a list page and a single
    GET): left out of the object's version. None is known today; see ``normalize/versions.py``."""

    # -- addressing ---------------------------------------------------------------------------
    def identifier(self, business: BusinessRef) -> str:
        value = getattr(business, self.id_kind.value, None)
        if value in (None, ""):
            raise MissingIdentifier(f"{self.name} needs the tenant's {self.id_kind.value}, which it lacks")
        return str(value)

    def list_url(self, business: BusinessRef) -> str:
        return self.list_path.format(**{self.id_kind.value: self.identifier(business)})

    def item_url(self, business: BusinessRef, object_id: int | str) -> str:
        return self.item_path.format(**{self.id_kind.value: self.identifier(business)}, id=_path_segment(object_id))

    def include_params(self) -> list[tuple[str, str]]:
        return [("include[]", value) for value in self.includes]

    def item_url_with_includes(self, business: BusinessRef, object_id: int | str) -> str:
        """:meth:`item_url` with the includes as its query string, written once per resource: a
        fetch per event, and aiohttp takes 8 µs of CPU longer over a list of parameters to encode."""
        return f"{self.item_url(business, object_id)}{_query(tuple(self.include_params()))}"

    def updated_since_params(self, since: datetime) -> list[tuple[str, str]]:
        """Server-side filter for "changed since", widened where FreshBooks is day-granular.

        The Eastern-day filter loses the time of day, so a day of overlap is added: a change made
        just before midnight Eastern, or seen by a clock a little behind, is still listed.
        """
        if self.updated_filter is UpdatedFilter.EASTERN_DAY:
            day = eastern_date(since) - timedelta(days=1)
            return [("search[updated_min]", day.isoformat())]
        if self.updated_filter is UpdatedFilter.UTC_SINCE:
            return [("updated_since", isoformat_utc(since))]
        return []

    # -- responses ----------------------------------------------------------------------------
    def unwrap_item(self, body: Any) -> dict[str, Any]:
        container = self._container(body)
        item = container.get(self.singular) if isinstance(container, dict) else None
        if not isinstance(item, dict):
            raise ValueError(f"FreshBooks {self.name} response has no {self.singular!r} object")
        return item

    def unwrap_page(self, body: Any) -> Page:
        container = self._container(body)
        if not isinstance(container, dict):
            raise ValueError(f"FreshBooks {self.name} list response is not an object")
        items = container.get(self.plural)
        meta = container.get("meta") if self.envelope is Envelope.META else container
        if not isinstance(items, list) or not isinstance(meta, dict):
            raise ValueError(f"FreshBooks {self.name} list response lacks {self.plural!r} or page metadata")
        try:
            return Page(
                items=items,
                page=int(meta["page"]),
                pages=int(meta["pages"]),
                per_page=int(meta["per_page"]),
                total=int(meta["total"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"FreshBooks {self.name} list response has bad page metadata: {meta!r}") from exc

    def _container(self, body: Any) -> Any:
        if self.envelope is Envelope.ACCOUNTING:
            return (body or {}).get("response", {}).get("result") if isinstance(body, dict) else None
        return body

    # -- timestamps ---------------------------------------------------------------------------
    def updated_at(self, obj: Mapping[str, Any]) -> datetime | None:
        if self.updated_field is None:
            return None
        return parse_timestamp(obj.get(self.updated_field), self.zone)

    def timestamps_utc(self, obj: Mapping[str, Any]) -> dict[str, datetime | None]:
        """Every known timestamp of ``obj`` as an aware UTC datetime."""
        return {
            name: parse_timestamp(obj.get(name), zone) for name, zone in self.timestamp_fields.items() if name in obj
        }


@dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]
    page: int
    pages: int
    per_page: int
    total: int


def _path_segment(object_id: int | str) -> str:
    text = str(object_id)
    if not text or not text.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"invalid FreshBooks object id {object_id!r}")
    return text


@dataclass(frozen=True)
class _Api:
    """What every resource of one FreshBooks API shares, so a resource states only its own."""

    id_kind: IdKind
    envelope: Envelope
    zone: tzinfo
    updated_filter: UpdatedFilter
    """How its updated field is filtered on (a resource without one: ``NONE``)."""

    def resource(
        self,
        name: str,
        nouns: tuple[str, str],
        paths: tuple[str, str],
        *,
        updated_field: str | None,
        timestamps: Mapping[str, tzinfo],
        includes: tuple[str, ...] = (),
    ) -> Resource:
        """``nouns``: the (singular, plural) keys of the response; ``paths``: (list, item) templates."""
        (singular, plural), (list_path, item_path) = nouns, paths
        return Resource(
            name=name,
            list_path=list_path,
            item_path=item_path,
            id_kind=self.id_kind,
            singular=singular,
            plural=plural,
            envelope=self.envelope,
            includes=includes,
            zone=self.zone,
            updated_field=updated_field,
            updated_filter=self.updated_filter if updated_field else UpdatedFilter.NONE,
            timestamp_fields=timestamps,
        )


_ACCOUNTING = _Api(IdKind.ACCOUNT_ID, Envelope.ACCOUNTING, EASTERN, UpdatedFilter.EASTERN_DAY)
_BUSINESS = _Api(IdKind.BUSINESS_ID, Envelope.META, UTC, UpdatedFilter.UTC_SINCE)


def _accounting(
    name: str,
    path: str,
    singular: str,
    plural: str,
    *,
    includes: tuple[str, ...] = (),
    extra_timestamps: Mapping[str, tzinfo] | None = None,
) -> Resource:
    base = f"/accounting/account/{{account_id}}/{path}"
    timestamps = {"updated": EASTERN, "created_at": EASTERN, **(extra_timestamps or {})}
    paths = (base, base + "/{id}")
    return _ACCOUNTING.resource(
        name, (singular, plural), paths, updated_field="updated", timestamps=timestamps, includes=includes
    )


def _business(
    name: str,
    list_path: str,
    item_path: str,
    singular: str,
    plural: str,
    *,
    updated_field: str | None = "updated_at",
    timestamps: tuple[str, ...] = ("created_at", "updated_at"),
) -> Resource:
    zones = {field_name: UTC for field_name in timestamps}
    return _BUSINESS.resource(
        name, (singular, plural), (list_path, item_path), updated_field=updated_field, timestamps=zones
    )


_RESOURCES = (
    _accounting("invoice", "invoices/invoices", "invoice", "invoices", includes=("lines",)),
    _accounting("estimate", "estimates/estimates", "estimate", "estimates", includes=("lines",)),
    _accounting("credit_note", "credit_notes/credit_notes", "credit_note", "credit_notes", includes=("lines",)),
    _accounting(
        "recurring", "invoice_profiles/invoice_profiles", "invoice_profile", "invoice_profiles", includes=("lines",)
    ),
    _accounting("bill", "bills/bills", "bill", "bills", includes=("lines",)),
    _accounting("client", "users/clients", "client", "clients", extra_timestamps={"signup_date": UTC}),
    _accounting("expense", "expenses/expenses", "expense", "expenses"),
    _accounting("payment", "payments/payments", "payment", "payments"),
    _accounting("item", "items/items", "item", "items"),
    _accounting("tax", "taxes/taxes", "tax", "taxes"),
    _accounting("bill_vendor", "bill_vendors/bill_vendors", "bill_vendor", "bill_vendors"),
    _accounting("category", "expenses/categories", "category", "categories"),
    _business(
        "project",
        "/projects/business/{business_id}/projects",
        "/projects/business/{business_id}/project/{id}",
        "project",
        "projects",
    ),
    _business(
        "time_entry",
        "/timetracking/business/{business_id}/time_entries",
        "/timetracking/business/{business_id}/time_entries/{id}",
        "time_entry",
        "time_entries",
        timestamps=("created_at", "updated_at", "started_at"),
    ),
    _business(
        "service",
        "/comments/business/{business_id}/services",
        "/comments/business/{business_id}/service/{id}",
        "service",
        "services",
        updated_field=None,
        timestamps=(),
    ),
)

CATALOGUE: Mapping[str, Resource] = {resource.name: resource for resource in _RESOURCES}


def get_resource(name: str) -> Resource:
    try:
        return CATALOGUE[name]
    except KeyError:
        raise UnknownResource(name) from None


def subscribed_nouns(setting: str) -> tuple[str, ...]:
    """The nouns ``FRESHBOOKS_EVENTS`` asks for (default: every noun the service normalizes).

    Checked when the service starts, so a typo is refused before any callback is registered.
    """
    chosen = tuple(dict.fromkeys(setting.replace(",", " ").split())) or tuple(CATALOGUE)
    unknown = [noun for noun in chosen if noun not in CATALOGUE]
    if unknown:
        raise ConfigurationError(
            f"FRESHBOOKS_EVENTS: names unknown nouns {unknown}; known: {', '.join(CATALOGUE)}",
            setting="FRESHBOOKS_EVENTS",
        )
    return chosen


@functools.cache
def _query(params: tuple[tuple[str, str], ...]) -> str:
    return f"?{urlencode(params)}" if params else ""
