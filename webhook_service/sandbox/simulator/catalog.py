"""The resources the simulator serves and how each one is addressed.

One table drives routing, storage and error bodies, so adding a resource (or
the callbacks API) is one entry here rather than edits across modules.

Harsher than documented: whether every accounting resource honours
``search[updated_min]`` / ``search[updated_max]`` is UNDOCUMENTED, so taxes
and categories here ignore both filters and list everything. A service that
trusts the filter alone for every resource is caught; one that overlaps a day
and dedupes is not. Services (projects family) have no timestamps and ignore
``updated_since`` for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Family = Literal["accounting", "projects"]


@dataclass(frozen=True, slots=True)
class ResourceSpec:
    """How one FreshBooks resource is named, addressed and filtered.

    ``family`` decides the identifier in the URL: accounting resources live
    under ``/accounting/account/{account_id}``; the projects family under
    ``/{service}/business/{business_id}`` (the integer business id).
    """

    name: str  # the event noun, e.g. "invoice", "time_entry"
    family: Family
    list_path: str  # below the account/business prefix
    item_path: str  # below the prefix, without the trailing "/{id}"
    singular: str  # key of a single object in responses
    plural: str  # key of the list in responses
    id_key: str | None  # legacy id key (accounting), e.g. "invoiceid"
    has_lines: bool = False  # lines only with include[]=lines
    honours_updated_filters: bool = True
    service_prefix: str = ""  # projects family: "projects", "timetracking", "comments"

    @property
    def error_field(self) -> str:
        """The ``field`` named in an accounting not-found error."""
        return self.id_key or f"{self.name.replace('_', '')}id"


def _acc(name: str, path: str, singular: str, plural: str, id_key: str | None, **extra: bool) -> ResourceSpec:
    return ResourceSpec(name, "accounting", path, path, singular, plural, id_key, **extra)  # type: ignore[arg-type]


RESOURCES: dict[str, ResourceSpec] = {
    spec.name: spec
    for spec in (
        _acc("invoice", "invoices/invoices", "invoice", "invoices", "invoiceid", has_lines=True),
        _acc("client", "users/clients", "client", "clients", "userid"),
        _acc("expense", "expenses/expenses", "expense", "expenses", "expenseid"),
        _acc("payment", "payments/payments", "payment", "payments", "logid"),
        _acc("estimate", "estimates/estimates", "estimate", "estimates", "estimateid", has_lines=True),
        _acc("item", "items/items", "item", "items", "itemid"),
        _acc("credit_note", "credit_notes/credit_notes", "credit_note", "credit_notes", "creditid", has_lines=True),
        # Taxes and categories ignore search[updated_min|max]: see the module docstring.
        _acc("tax", "taxes/taxes", "tax", "taxes", "taxid", honours_updated_filters=False),
        _acc("bill", "bills/bills", "bill", "bills", None, has_lines=True),
        _acc("bill_vendor", "bill_vendors/bill_vendors", "bill_vendor", "bill_vendors", "vendorid"),
        _acc("category", "expenses/categories", "category", "categories", "categoryid", honours_updated_filters=False),
        _acc(
            "recurring",
            "invoice_profiles/invoice_profiles",
            "invoice_profile",
            "invoice_profiles",
            "profileid",
            has_lines=True,
        ),
        ResourceSpec(
            "project", "projects", "projects", "project", "project", "projects", None, service_prefix="projects"
        ),
        ResourceSpec(
            "time_entry",
            "projects",
            "time_entries",
            "time_entries",
            "time_entry",
            "time_entries",
            None,
            service_prefix="timetracking",
        ),
        # Services carry no timestamps, so updated_since cannot apply to them.
        ResourceSpec(
            "service",
            "projects",
            "services",
            "service",
            "service",
            "services",
            None,
            honours_updated_filters=False,
            service_prefix="comments",
        ),
    )
}


def get_spec(resource: str) -> ResourceSpec:
    """Look a resource up by its event noun; ``KeyError`` names the valid ones."""
    try:
        return RESOURCES[resource]
    except KeyError:
        raise KeyError(f"unknown resource {resource!r}; expected one of {sorted(RESOURCES)}") from None
