"""FreshBooks timestamps become aware UTC datetimes, zone chosen by resource; the service's own
columns store aware datetimes as naive UTC and give them back aware."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects import sqlite
from sqlalchemy.types import DateTime

from webhook_service.freshbooks.catalogue import get_resource
from webhook_service.freshbooks.timestamps import EASTERN, parse_timestamp
from webhook_service.storage.columns import UTCDateTime


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


MOMENTS = [
    datetime(2026, 12, 3, 15, 30, 28, 702726, tzinfo=UTC),
    datetime(2026, 12, 3, 15, 30, 28, tzinfo=UTC),  # no microseconds: still six digits
    datetime(2026, 7, 1, 8, 0, 0, 5, tzinfo=timezone(timedelta(hours=-4))),  # another zone: converted
    datetime(2027, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),  # across a year
    datetime(999, 3, 4, 5, 6, 7, 8, tzinfo=UTC),  # a three-digit year is zero-padded
    datetime(2026, 3, 8, 3, 30, tzinfo=EASTERN),  # a named zone, just after its DST change
]


@pytest.mark.parametrize("moment", MOMENTS, ids=str)
def test_sqlite_stores_the_text_sqlalchemy_would(moment):
    """The SQLite bind processor is one fused function; rows written before it and after it must
    compare and sort alike, so its text is the one the generic chain produced."""
    dialect = sqlite.dialect()
    column = UTCDateTime()
    generic = DateTime().dialect_impl(dialect).bind_processor(dialect)
    expected = generic(column.process_bind_param(moment, dialect))
    stored = column.bind_processor(dialect)(moment)
    assert stored == expected
    assert column.process_result_value(datetime.fromisoformat(stored), dialect) == moment.astimezone(UTC)


def test_a_naive_datetime_is_refused_on_every_backend():
    for dialect in (sqlite.dialect(), None):
        with pytest.raises(ValueError, match="naive"):
            if dialect is None:
                UTCDateTime().process_bind_param(datetime(2026, 1, 1), dialect)
            else:
                UTCDateTime().bind_processor(dialect)(datetime(2026, 1, 1))
    assert UTCDateTime().bind_processor(sqlite.dialect())(None) is None


def test_a_value_written_again_is_stored_as_the_first_time_and_each_instant_as_its_own():
    """Texts are kept for values written again (a batch's rows share their ``now``): a kept text
    must be the one the value would get, and instants that compare equal in their own zone but are
    not the same moment (the hour repeated when DST ends, told apart by ``fold``) must not share one."""
    dialect = sqlite.dialect()
    write = UTCDateTime().bind_processor(dialect)
    generic = DateTime().dialect_impl(dialect).bind_processor(dialect)
    for moment in [*MOMENTS, *MOMENTS]:
        assert write(moment) == generic(UTCDateTime().process_bind_param(moment, dialect))
    first = datetime(2026, 11, 1, 1, 30, tzinfo=EASTERN)  # EDT, 05:30 UTC
    second = first.replace(fold=1)  # the same wall time an hour later, EST: 06:30 UTC
    assert first == second  # Python compares them by wall time in their shared zone
    assert [write(first), write(second), write(first)] == [
        "2026-11-01 05:30:00.000000",
        "2026-11-01 06:30:00.000000",
        "2026-11-01 05:30:00.000000",
    ]
    now = datetime.now(UTC)
    assert write(now) == write(now.astimezone(EASTERN)) == write(datetime.fromisoformat(now.isoformat()))
