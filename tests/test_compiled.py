"""Statements run on the driver connection (``storage.compiled``: SQLite's own, asyncpg under
SQLAlchemy's adapter) read, write, commit and fail as the engine's do."""

from __future__ import annotations

import asyncio
import secrets
from datetime import timedelta

import pytest
from conftest import ON_POSTGRES
from records import tenant_row
from sqlalchemy import bindparam, exc, func, select, text

from webhook_service.contract import operational
from webhook_service.inbound import registrar
from webhook_service.storage import bulk, compiled, inbox, outbox
from webhook_service.storage import callbacks as callback_store
from webhook_service.storage import tenants as tenant_store
from webhook_service.storage.columns import utcnow
from webhook_service.storage.database import unavailable
from webhook_service.storage.models import InboxEvent, Tenant, TenantStatus
from webhook_service.storage.session import Conflict, conflicts

_TENANT_IDS = select(Tenant.id).where(Tenant.id == bindparam("id"))


async def _recorded(runtime, tenant, bodies: list[bytes]) -> tuple[str, list[inbox.Recorded]]:
    await registrar.sync_tenant(runtime, tenant)
    async with runtime.db.sessions() as session:
        [callback, *_] = await callback_store.active_for_tenant(session, tenant.id)
    now = utcnow()
    arrivals = [
        inbox.Arrival(callback.id, tenant.id, {"name": "invoice.update", "object_id": str(n)}, body, {}, now)
        for n, body in enumerate(bodies)
    ]
    async with runtime.db.sessions() as session:
        rows = await inbox.record_many(session, arrivals, dedupe_window=timedelta(minutes=5))
        await session.commit()
    return callback.id, rows


async def test_a_read_on_the_driver_gives_the_rows_the_engine_gives(runtime, tenant):
    """The same values, processed the same way: aware datetimes from SQLite's text, booleans from 0 and 1."""
    callback_id, rows = await _recorded(runtime, tenant, [b"one", b"two", b"one"])
    values = {
        "callbacks": [callback_id],
        "digests": [inbox.body_hash(b"one"), inbox.body_hash(b"two")],
        "since": utcnow() - timedelta(hours=1),
    }
    query = inbox._originals_query()
    async with runtime.db.sessions() as session:
        direct = await compiled.rows(session, query, values)
        engine = [tuple(row) for row in (await (await session.connection()).execute(query, values)).all()]
    assert direct == engine
    assert [row[2] for row in direct] == [rows[0].id, rows[1].id]  # the copy is not an original
    assert all(row[4].tzinfo is not None and row[5] is False for row in direct)


async def test_a_write_that_breaks_a_constraint_fails_as_sqlalchemys_error_with_its_values_hidden(runtime, tenant):
    """Group commits tell a bad item from a failing database by the error's class (``Batcher``'s
    ``split_on``, :func:`~webhook_service.storage.database.unavailable`), and no log line may
    carry a webhook's body: both hold for a write sent straight to the driver."""
    _, rows = await _recorded(runtime, tenant, [b"first"])
    marker = f"body-{secrets.token_hex(8)}"
    again = {**rows[0].row, "raw_body": marker}  # the same id: the primary key refuses it
    async with runtime.db.sessions() as session:
        with pytest.raises(exc.IntegrityError) as caught:
            await bulk.insert_rows(session, InboxEvent, [again])
    assert marker not in str(caught.value)
    assert unavailable(caught.value) is None  # about the data: a 500 for a bug, never a 503
    async with runtime.db.sessions() as session:
        with pytest.raises(Conflict), conflicts():
            await bulk.insert_rows(session, InboxEvent, [again])
        await session.rollback()  # the session is still usable after a rollback
        assert await compiled.rows(session, _TENANT_IDS, {"id": "nobody"}) == []


async def test_a_transaction_begun_without_a_connection_gets_one(runtime):
    """A transaction begun and not used yet has no connection; the driver's lookup must connect
    through the async session then, not fail for want of a greenlet. A row added to it later is
    flushed before the next statement on the driver, which finds it."""
    await runtime.db.engine.dispose()  # no pooled connection: the next one is made, which is I/O
    async with runtime.db.sessions() as session:
        await session.begin()
        assert session.in_transaction()
        assert await compiled.rows(session, _TENANT_IDS, {"id": "ten_compiled"}) == []
        session.add(tenant_row(runtime.box, "ten_compiled", account_id="ACC9", business_id=9, now=utcnow()))
        found = await compiled.rows(session, _TENANT_IDS, {"id": "ten_compiled"})
        assert [tuple(row) for row in found] == [("ten_compiled",)]
        await session.rollback()


async def test_a_write_on_the_driver_is_the_sessions_own_rolled_back_or_committed_with_it(runtime, tenant):
    """The driver's statements run inside the session's transaction (on PostgreSQL, begun as
    SQLAlchemy's adapter begins it), never on their own: a rollback takes back what they wrote,
    and they see what the session wrote before them."""
    _, [row] = await _recorded(runtime, tenant, [b"kept"])
    rows = [{**row.row, "id": row.id + n, "raw_body": f"new-{n}"} for n in (1000, 1001)]
    async with runtime.db.sessions() as session:
        await compiled.rows(session, _TENANT_IDS, {"id": tenant.id})  # the transaction is begun by the driver
        await bulk.insert_rows(session, InboxEvent, rows)
        await session.rollback()
    async with runtime.db.sessions() as session:
        bodies = set((await session.execute(select(InboxEvent.raw_body))).scalars())
    assert bodies == {"kept"}

    async with runtime.db.sessions() as session:
        session.add(tenant_row(runtime.box, "ten_seen", account_id="ACC8", business_id=8, now=utcnow()))
        await session.flush()  # the ORM's write, then the driver's read in the same transaction
        assert [tuple(r) for r in await compiled.rows(session, _TENANT_IDS, {"id": "ten_seen"})] == [("ten_seen",)]
        await bulk.insert_rows(session, InboxEvent, rows)
        await session.commit()
    async with runtime.db.sessions() as session:
        bodies = set((await session.execute(select(InboxEvent.raw_body))).scalars())
    assert bodies == {"kept", "new-1000", "new-1001"}


async def test_ids_the_database_numbers_come_back_in_the_rows_order(runtime, tenant):
    """The inbox's answer to each webhook names its row's id: each must be its own row's."""
    _, [first] = await _recorded(runtime, tenant, [b"first"])
    rows = []
    for n in range(40):
        row = {**first.row, "raw_body": f"body-{n}", "body_hash": inbox.body_hash(f"body-{n}".encode())}
        del row["id"]
        rows.append(row)
    async with runtime.db.sessions() as session:
        ids = await bulk.insert_returning_ids(session, InboxEvent, rows)
        await session.commit()
    assert len(set(ids)) == 40 and min(ids) > first.id
    async with runtime.db.sessions() as session:
        stored = dict((await session.execute(select(InboxEvent.id, InboxEvent.raw_body))).all())
    assert [stored[inbox_id] for inbox_id in ids] == [f"body-{n}" for n in range(40)]


@pytest.mark.skipif(not ON_POSTGRES, reason="a server that drops the connection")
async def test_a_connection_the_server_dropped_fails_as_the_engines_and_is_not_used_again(runtime):
    """A statement on a connection PostgreSQL terminated raises SQLAlchemy's error, marked as
    invalidated, and the pool does not hand that connection out again."""
    async with runtime.db.sessions() as session, runtime.db.sessions() as other:
        backend = (await compiled.rows(session, select(func.pg_backend_pid()), {}))[0][0]
        await other.execute(select(func.pg_terminate_backend(backend)))  # another connection: session holds its own
        await other.commit()
        with pytest.raises(exc.DBAPIError) as caught:
            await compiled.rows(session, _TENANT_IDS, {"id": "anyone"})
        assert caught.value.connection_invalidated
    async with runtime.db.sessions() as session:  # a new connection
        assert (await compiled.rows(session, select(func.pg_backend_pid()), {}))[0][0] != backend


async def test_a_statement_on_the_driver_comes_after_the_sessions_pending_changes(runtime, tenant):
    """As the ORM's own statements do (autoflush): a change made to an instance is written before
    the next statement runs, whichever way that statement goes. Disconnecting a tenant changes its
    row and then emits ``tenant.disconnected`` in the same transaction; were the row's update held
    back to the commit, the transaction would lock the event's sequence counter before the tenant's
    row, the reverse of a refresh that finds the grant revoked, and PostgreSQL would end one of them
    as a deadlock (the next test makes the two meet)."""
    async with runtime.db.sessions() as session:
        row = await session.get(Tenant, tenant.id)
        row.status_reason = "changed, not flushed"
        [(seen,)] = await compiled.rows(
            session, select(Tenant.status_reason).where(Tenant.id == bindparam("id")), {"id": tenant.id}
        )
        await session.rollback()
    assert seen == "changed, not flushed"


@pytest.mark.skipif(not ON_POSTGRES, reason="two transactions at once on one database: PostgreSQL's row locks")
async def test_a_disconnection_and_a_refresh_that_finds_the_grant_revoked_wait_for_each_other(runtime, tenant):
    """Both change the tenant's row and emit an event of the tenant (one sequence counter). The
    refresh (``mark_reauth_required``'s writes) is made to arrive after the disconnection has
    emitted and before it commits. The disconnection's change to the row goes first, so the refresh
    waits for the row and then finds the tenant no longer active; with the change held back to the
    commit, each would hold what the other waits for, and PostgreSQL would end one as a deadlock."""
    now = utcnow()

    async def refresh_finds_the_grant_revoked() -> Tenant | None:
        async with runtime.db.sessions() as session:
            moved = await tenant_store.leave_active(
                session, tenant.id, TenantStatus.REAUTH_REQUIRED, "revoked", now=now
            )
            if moved is not None:
                event = operational.reauth_required(moved, reason="revoked", reconnect_url="http://x/", at=now)
                await outbox.emit(session, event, now=now)
            await session.commit()
            return moved

    async with runtime.db.sessions() as session:
        row = await session.get(Tenant, tenant.id)
        row.status, row.status_reason = TenantStatus.DISCONNECTED.value, "disconnected by operator"
        await outbox.emit(session, operational.disconnected(row, reason="by operator", revoked=True, at=now), now=now)
        refresh = asyncio.create_task(refresh_finds_the_grant_revoked())
        async with asyncio.timeout(10):  # until the refresh waits for a lock this transaction holds
            while not await _waiting_for_a_lock(runtime):
                await asyncio.sleep(0.01)
        await session.commit()
    assert await refresh is None  # it waited, then found the tenant disconnected
    async with runtime.db.sessions() as session:
        assert (await session.get(Tenant, tenant.id)).status == TenantStatus.DISCONNECTED.value


async def _waiting_for_a_lock(runtime) -> bool:
    async with runtime.db.engine.connect() as connection:
        waiting = await connection.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
        )
        return bool(waiting.scalar_one())
