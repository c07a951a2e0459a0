"""A claim costs what it takes, not what waits: its work does not grow with the backlog.

Measured in SQLite virtual-machine steps (a progress handler), which count the rows a statement
reads and do not depend on the machine's speed: a claim of 16 rows with 4,000 waiting must read
about as much as with 200 waiting. Before the partial indexes (migration 0010) a claim read every
due row through a status index and sorted them, and read its rows back through the whole table.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from conftest import ON_POSTGRES
from sqlalchemy import Connection, Engine, create_engine, event, insert, select
from sqlalchemy.engine import make_url

from webhook_service.storage import deliveries as claims
from webhook_service.storage.bulk import table_of
from webhook_service.storage.columns import utcnow
from webhook_service.storage.models import Delivery, InboxEvent, Tenant

pytestmark = pytest.mark.skipif(ON_POSTGRES, reason="counts SQLite's own steps (PostgreSQL plans by its statistics)")

IN_FLIGHT = 64  # rows already leased: a claim walks past them
SMALL, LARGE = 200, 4000
STEP = 100  # VM instructions per progress-handler call


class Steps:
    def __init__(self) -> None:
        self.count = 0

    def tick(self) -> int:
        self.count += 1
        return 0


@pytest.fixture
def engine(database_url: str) -> Iterator[tuple[Engine, Steps]]:
    steps = Steps()
    path = make_url(database_url).database
    sync = create_engine(f"sqlite:///{path}")
    event.listen(sync, "connect", lambda connection, _: connection.set_progress_handler(steps.tick, STEP))
    yield sync, steps
    sync.dispose()


def _seed(connection: Connection, waiting: int) -> None:
    """``waiting`` due rows of each kind (the first ``IN_FLIGHT`` leased), behind five times as
    many finished ones."""
    now = utcnow()
    connection.execute(
        insert(table_of(Tenant)),
        [
            {
                "id": "ten_claims",
                "account_id": "ACC",
                "business_id": 1,
                "name": "Claims",
                "role": "owner",
                "scopes": "",
                "status": "active",
                "access_token_enc": "x",
                "refresh_token_enc": "x",
                "access_expires_at": now + timedelta(hours=1),
                "token_version": 1,
                "created_at": now,
                "updated_at": now,
            }
        ],
    )
    finished, due = 5 * waiting, waiting
    connection.execute(
        insert(table_of(InboxEvent)),
        [
            {
                "tenant_id": "ten_claims",
                "callback_id": "cb",
                "event_name": "invoice.update",
                "object_id": str(n),
                "raw_body": "name=invoice.update",
                "headers": "{}",
                "body_hash": f"{n:064d}",
                "status": "processed" if n < finished else "pending",
                "received_at": now - timedelta(minutes=5),
                "processed_at": now if n < finished else None,
                "attempts": 0,
                "lease_owner": "busy.1" if finished <= n < finished + IN_FLIGHT else None,
                "lease_until": now + timedelta(minutes=1) if finished <= n < finished + IN_FLIGHT else None,
            }
            for n in range(finished + due)
        ],
    )
    connection.execute(
        insert(table_of(Delivery)),
        [
            {
                "id": f"dlv_{n:08d}",
                "event_id": "evt",
                "subscription_id": "sub",
                "status": "succeeded" if n < finished else "pending",
                "attempts": 1 if n < finished else 0,
                "schedule_base": 1,
                "next_attempt_at": now - timedelta(seconds=waiting + finished - n),
                "lease_owner": "busy.1" if finished <= n < finished + IN_FLIGHT else None,
                "lease_until": now + timedelta(minutes=1) if finished <= n < finished + IN_FLIGHT else None,
                "created_at": now,
                "updated_at": now,
            }
            for n in range(finished + due)
        ],
    )


def _claim_steps(engine: Engine, steps: Steps, statements: Any, waiting: int) -> tuple[int, int]:
    """Steps to look for due rows, stamp 16 and read them back; and how many it took."""
    due, stamp, read = statements
    now = utcnow()
    with engine.connect() as connection:
        _seed(connection, waiting)
        params = {"now": now, "limit": 16, "until": now + timedelta(minutes=1)}
        steps.count = 0
        assert connection.execute(due, params).first() is not None
        ids = list(connection.execute(stamp, {**params, "token": "me.1"}).scalars())
        rows = connection.execute(read, {"ids": ids}).all()
        connection.rollback()
    return steps.count, len(rows)


@pytest.mark.parametrize("kind", ["inbox", "deliveries"])
def test_a_claim_reads_no_more_with_a_long_backlog(engine: tuple[Engine, Steps], kind: str) -> None:
    sync, steps = engine
    if kind == "deliveries":
        # the read joins each row's event and subscription (by primary key): here, the rows alone
        due, stamp, read = claims._delivery_claim()
        statements = (due, stamp, select(Delivery.id).where(read.whereclause))
    else:
        statements = claims._inbox_claim()
    small, taken_small = _claim_steps(sync, steps, statements, SMALL)
    with sync.begin() as connection:  # the same database, the backlog twenty times longer
        for table in ("deliveries", "inbox_events", "tenants"):
            connection.exec_driver_sql(f"DELETE FROM {table}")
    large, taken_large = _claim_steps(sync, steps, statements, LARGE)
    assert taken_small == taken_large == 16
    assert large < 2 * small, f"{kind}: {large * STEP} steps with {LARGE} waiting, {small * STEP} with {SMALL}"
