"""A list bound as one parameter (``storage.lists.one_of``): the rows it names, and the same SQL for
any length (an array on PostgreSQL, which asyncpg then prepares once per connection; a JSON array
on SQLite, whose text SQLAlchemy then renders once)."""

from __future__ import annotations

import pytest
from records import tenant_row
from sqlalchemy import select

from webhook_service.storage import deliveries as claims
from webhook_service.storage.asyncpg_direct import DirectConnection
from webhook_service.storage.columns import utcnow
from webhook_service.storage.lists import one_of
from webhook_service.storage.models import InboxEvent, Tenant
from webhook_service.storage.sqlite_inline import InlineConnection


async def _tenants(runtime, count: int) -> list[str]:
    now = utcnow()
    ids = [f"ten_list{n}" for n in range(count)]
    async with runtime.db.sessions() as session:
        for n, tenant_id in enumerate(ids):
            session.add(tenant_row(runtime.box, tenant_id, account_id=f"ACCLIST{n}", business_id=5000 + n, now=now))
        await session.commit()
    return ids


async def test_one_of_selects_exactly_the_rows_named(runtime):
    ids = await _tenants(runtime, 4)
    query = select(Tenant.id).where(one_of(Tenant.id, "ids")).order_by(Tenant.id)
    async with runtime.db.sessions() as session:
        for named in ([], [ids[2]], [ids[0], ids[3], "ten_nosuch"], ids):
            found = (await session.execute(query, {"ids": named})).scalars().all()
            assert found == sorted(set(named) & set(ids))


async def test_one_of_takes_integers_and_refuses_what_it_cannot_compare_as_stored(runtime):
    query = select(InboxEvent.id).where(one_of(InboxEvent.id, "ids"))
    async with runtime.db.sessions() as session:
        assert (await session.execute(query, {"ids": [1, 2, 3]})).scalars().all() == []
        if runtime.db.engine.dialect.name == "sqlite":  # a datetime would go as JSON writes it, not as stored
            with pytest.raises(Exception, match="strings and integers"):
                await session.execute(select(Tenant.id).where(one_of(Tenant.created_at, "at")), {"at": [utcnow()]})


async def test_a_fence_sends_the_same_sql_for_any_number_of_rows(runtime, monkeypatch):
    """Seen where the SQL is handed over to the driver (the fence runs there on both databases,
    see ``storage.compiled``)."""
    sent: list[str] = []

    def watched(driver: type) -> None:
        to_driver = driver.fetch_all

        async def fetch_all(self, sql, parameters):  # type: ignore[no-untyped-def]
            if sql.lstrip().upper().startswith("UPDATE INBOX_EVENTS"):
                sent.append(sql)
            return await to_driver(self, sql, parameters)

        monkeypatch.setattr(driver, "fetch_all", fetch_all)

    watched(InlineConnection)
    watched(DirectConnection)
    async with runtime.db.sessions() as session:
        for count in (1, 2, 5):
            kept = await claims.fence(session, InboxEvent, {n: "nobody" for n in range(1, count + 1)})
            assert kept == set()  # no such inbox events: every lease counts as lost
        await session.rollback()
    assert len(sent) == 3
    assert len(set(sent)) == 1  # one statement for 1, 2 and 5 rows
