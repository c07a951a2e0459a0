"""FreshBooks timestamps become aware UTC datetimes, zone chosen by resource."""

from datetime import UTC, datetime

from webhook_service.freshbooks.catalogue import get_resource
from webhook_service.freshbooks.timestamps import EASTERN, parse_timestamp


def test_zone_less_accounting_time_is_us_eastern_with_dst():
    assert parse_timestamp("2026-07-01 12:00:00", EASTERN) == datetime(2026, 7, 1, 16, 0, tzinfo=UTC)
    assert parse_timestamp("2026-01-15 12:00:00", EASTERN) == datetime(2026, 1, 15, 17, 0, tzinfo=UTC)


def test_projects_time_is_utc_with_or_without_z():
    assert parse_timestamp("2026-07-01T12:00:00", UTC) == datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
    assert parse_timestamp("2026-07-01T12:00:00Z", EASTERN) == datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
    assert parse_timestamp("2026-07-01T08:00:00-04:00", UTC) == datetime(2026, 7, 1, 12, 0, tzinfo=UTC)


def test_resource_knows_its_zone():
    invoice = get_resource("invoice")
    project = get_resource("project")
    client = get_resource("client")
    assert invoice.updated_at({"updated": "2026-11-21 10:00:00"}) == datetime(2026, 11, 21, 15, 0, tzinfo=UTC)
    assert project.updated_at({"updated_at": "2026-11-21T10:00:00"}) == datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
    stamps = client.timestamps_utc({"updated": "2026-11-21 10:00:00", "signup_date": "2026-11-21 10:00:00"})
    assert stamps == {
        "updated": datetime(2026, 11, 21, 15, 0, tzinfo=UTC),
        "signup_date": datetime(2026, 11, 21, 10, 0, tzinfo=UTC),
    }
