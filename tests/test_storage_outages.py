"""The database locked by another process, or out of space: the service keeps answering, says 503
with ``Retry-After`` for what it cannot store, stores everything it acknowledged, and recovers alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import subprocess
import sys
import threading
import time

import httpx
import pytest
from conftest import ON_POSTGRES, OWNER_ACCOUNT_ID
from processes import accepted, deployment, webhook_ids_by_object
from prometheus_client import REGISTRY
from sqlalchemy.engine import make_url

from webhook_service.duties.holder import Duty, hold
from webhook_service.storage import leases, sqlite_inline, writer_gate
from webhook_service.storage.database import unavailable

pytestmark = pytest.mark.slow

BOUND = 2  # INBOUND_COMMIT_TIMEOUT here
LOCK_SECONDS = 8.0  # several times BOUND: a commit that waited for the lock would show

#: Another process holding the lock a webhook's commit needs until told to let go on stdin: on
#: SQLite the file's exclusive lock (a CLI command, a backup, a sqlite3 shell), on PostgreSQL a
#: table lock on the inbox (a migration, an operator's maintenance).
SQLITE_LOCKER = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
connection.rollback()
"""
POSTGRES_LOCKER = """
import asyncio, sys
import asyncpg

async def main():
    connection = await asyncpg.connect(sys.argv[1])
    transaction = connection.transaction()
    await transaction.start()
    await connection.execute("LOCK TABLE inbox_events IN SHARE ROW EXCLUSIVE MODE")
    print("locked", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    await transaction.rollback()
    await connection.close()

asyncio.run(main())
"""


def _locker(database_url: str) -> list[str]:
    url = make_url(database_url)
    if ON_POSTGRES:
        plain = url.set(drivername="postgresql").render_as_string(hide_password=False)
        return [sys.executable, "-c", POSTGRES_LOCKER, plain]
    return [sys.executable, "-c", SQLITE_LOCKER, str(url.database)]


def test_another_process_holding_the_lock_freezes_nothing(database_url, simulator, sink, tmp_path):
    settings = {"inbound_commit_timeout": BOUND, "delivery_poll_interval": 0.2}
    with deployment(database_url, simulator, sink, tmp_path, **settings) as running:
        ids = [obj["id"] for obj in simulator.state.seed(OWNER_ACCOUNT_ID, "invoice", 40)]
        locker = subprocess.Popen(_locker(database_url), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            assert locker.stdout is not None and locker.stdout.readline().strip() == b"locked"
            started = time.monotonic()
            health = _poll_healthz(running.base_url, until=started + LOCK_SECONDS)
            timings: list[tuple[int | None, float, str | None]] = []
            with httpx.Client(timeout=30.0) as client:
                for object_id in ids[:4]:  # one at a time across the lock (each refused after BOUND)
                    sent = time.monotonic()
                    status, retry_after = _post(running, client, object_id)
                    timings.append((status, time.monotonic() - sent, retry_after))
            health.join()
            assert time.monotonic() - started >= LOCK_SECONDS - 0.5
        finally:
            if locker.stdin is not None:
                locker.stdin.write(b"go\n")
                locker.stdin.close()
            locker.wait(timeout=10)

        ordered = sorted(health.latencies)
        p99 = ordered[int(len(ordered) * 0.99)]
        print(
            f"healthz during the lock: {len(ordered)} polls, p99 {p99 * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms"
        )
        print("webhooks during the lock:", [(s, round(t, 2)) for s, t, _ in timings])
        assert health.failures == 0
        # The target is 100 ms; the loop blocked (as before) made polls hang for the whole lock.
        assert max(health.latencies) < 1.0
        assert all(status == 503 and retry_after is not None for status, _, retry_after in timings)
        assert max(elapsed for _, elapsed, _ in timings) < BOUND + 3.0  # not held until the lock is let go

        # FreshBooks sends again: now everything is taken, stored and delivered.
        statuses = running.sender.stream((running.base_url, i) for i in ids)
        acknowledged = accepted(statuses)
        assert acknowledged == {str(i) for i in ids}
        received = sink.sink.wait_until(
            lambda got: acknowledged <= webhook_ids_by_object(got).keys(), 40, "every acknowledged event"
        )
        assert acknowledged <= webhook_ids_by_object(received).keys()


class _HealthPoller(threading.Thread):
    def __init__(self, base_url: str, until: float) -> None:
        super().__init__(daemon=True)
        self.base_url, self.until = base_url, until
        self.latencies: list[float] = []
        self.failures = 0

    def run(self) -> None:
        with httpx.Client(timeout=5.0) as client:
            while time.monotonic() < self.until:
                sent = time.monotonic()
                try:
                    ok = client.get(f"{self.base_url}/healthz").status_code == 200
                except httpx.TransportError:
                    ok = False
                self.latencies.append(time.monotonic() - sent)
                self.failures += not ok
                self._pace.wait(0.01)  # a poll every 10 ms or so, not a busy loop stealing the service's core

    _pace = threading.Event()  # never set: only its timed wait paces the polls


def _poll_healthz(base_url: str, until: float) -> _HealthPoller:
    poller = _HealthPoller(base_url, until)
    poller.start()
    return poller


def _post(running, client: httpx.Client, object_id: int) -> tuple[int | None, str | None]:
    from webhook_service.sandbox.simulator import signing

    sender = running.sender
    message = {"name": "invoice.update", "object_id": str(object_id), "account_id": OWNER_ACCOUNT_ID}
    headers = {
        "Content-Type": signing.FORM_CONTENT_TYPE,
        signing.SIGNATURE_HEADER: signing.sign(sender.verifier, message),
    }
    response = client.post(running.base_url + sender.path, content=signing.encode(message), headers=headers)
    return response.status_code, response.headers.get("retry-after")


async def test_a_full_disk_answers_503_and_recovers_by_itself(service, connected, simulator, sink, monkeypatch):
    """Every commit fails as on a full disk: webhooks get 503 with Retry-After and ``/readyz`` says
    writes fail; once space is back both recover with no restart, and nothing acknowledged is lost."""
    from webhook_service.delivery import subscriptions

    runtime = service.runtime
    await asyncio.to_thread(service.server.run_coroutine, subscriptions.create(runtime, {"url": f"{sink.base_url}/d"}))
    full = threading.Event()
    full.set()
    _fail_commits_while(monkeypatch, full)
    ids = [obj["id"] for obj in simulator.state.seed(OWNER_ACCOUNT_ID, "invoice", 5)]
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30.0) as client:
        for object_id in ids:
            status, retry_after = await asyncio.to_thread(_post_to, service, object_id)
            assert (status, retry_after is not None) == (503, True)
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["writes"] == "full"

        full.clear()  # space is back
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        for object_id in ids:
            status, _ = await asyncio.to_thread(_post_to, service, object_id)
            assert status == 200
    received = await asyncio.to_thread(
        sink.sink.wait_until, lambda got: len(webhook_ids_by_object(got)) >= len(ids), 30, "every event"
    )
    assert webhook_ids_by_object(received).keys() == {str(i) for i in ids}


def _post_to(service, object_id: int) -> tuple[int | None, str | None]:
    from processes import FreshBooksSender

    class _Running:
        base_url = service.base_url
        sender = FreshBooksSender(service.simulator)

    with httpx.Client(timeout=30.0) as client:
        return _post(_Running, client, object_id)


def _fail_commits_while(monkeypatch: pytest.MonkeyPatch, full: threading.Event) -> None:
    """Commits raise what SQLite (or PostgreSQL) raises on a full disk while ``full`` is set."""
    if ON_POSTGRES:
        import asyncpg
        from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection

        original_pg = AsyncAdapt_asyncpg_connection.commit

        def commit_pg(self):  # type: ignore[no-untyped-def]
            if full.is_set():
                self.rollback()
                raise self.dbapi.OperationalError("could not extend file: No space left on device") from (
                    asyncpg.exceptions.DiskFullError("could not extend file")
                )
            return original_pg(self)

        monkeypatch.setattr(AsyncAdapt_asyncpg_connection, "commit", commit_pg)
        return
    original = sqlite_inline.InlineConnection.commit

    async def commit(self):  # type: ignore[no-untyped-def]
        if full.is_set():
            await self.rollback()
            error = sqlite3.OperationalError("database or disk is full")
            error.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
            raise error
        await original(self)

    monkeypatch.setattr(sqlite_inline.InlineConnection, "commit", commit)


@pytest.mark.skipif(ON_POSTGRES, reason="the writer gate is the SQLite engine's")
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")  # a gate thread must not fail
async def test_a_process_stuck_in_its_write_turn_bounds_the_wait_and_the_turn_passes_on(runtime):
    """Another service process holds the SQLite writer gate (``PATH-writer.lock``) and does not let
    go: a bounded write gives up in its bound with a "busy" error and the loop keeps running; once
    the gate is let go, the waiter given up on has let it go too, and writes pass again, including
    one that was waiting when the gate came free."""
    database = make_url(runtime.settings.database_url).database
    holder = os.open(f"{database}-writer.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    loop = asyncio.get_running_loop()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    beat = asyncio.create_task(ticker())
    try:
        started = loop.time()
        with pytest.raises(Exception) as refused:
            async with runtime.db.bounded_session(0.5) as session:
                await leases.touch(session, "gate-test")
                await session.commit()
        waited = loop.time() - started
        assert unavailable(refused.value) == "busy"
        assert 0.5 <= waited < 2.0, f"the bounded write gave up after {waited:.2f} s"
        assert ticks >= 10, "the event loop was blocked while the write waited for the gate"

        async def write() -> None:
            async with runtime.db.bounded_session(10.0) as session:
                await leases.touch(session, "gate-test")
                await session.commit()

        waiting = asyncio.create_task(write())
        before = ticks
        while ticks < before + 5:  # the write is under way and waiting for the gate
            await asyncio.sleep(0.01)
        assert not waiting.done()
        fcntl.flock(holder, fcntl.LOCK_UN)  # the stuck process lets go
        await asyncio.wait_for(waiting, 5.0)
        await asyncio.wait_for(write(), 5.0)  # and nobody kept the turn: the next write passes too
    finally:
        beat.cancel()
        os.close(holder)


def _gate_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "sqlite-writer-gate" and thread.is_alive()]


def _blocked_in_the_kernel(threads: list[threading.Thread]) -> bool:
    """Every one of ``threads`` asleep in a system call (here: ``flock``), by ``/proc``."""
    for thread in threads:
        with open(f"/proc/self/task/{thread.native_id}/stat") as stat:
            if stat.read().rsplit(")", 1)[1].split()[0] != "S":
                return False
    return True


@pytest.mark.skipif(ON_POSTGRES, reason="the writer gate is the SQLite engine's")
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads the waiting thread's state from /proc")
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
async def test_a_wait_given_up_on_never_lets_go_of_the_next_writes_turn(tmp_path):
    """A bounded write gives up while another process holds the writer; the connection's next write
    waits too. When the holder lets go while the loop is busy (the waiting threads then need the
    GIL before they can act), the next write gets the turn and really holds it: the file stays
    locked against every other process until it lets go. (With a thread per wait, both were
    granted the lock, which belongs to the open file, and the one given up on then let it go.)"""
    path = str(tmp_path / "service.db-writer.lock")
    gate = writer_gate.WriterGate(path)
    holder = os.open(path, os.O_RDWR)
    other_process = os.open(path, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        assert not await gate.take(0.05)  # given up on
        next_write = asyncio.create_task(gate.take(5.0))
        await asyncio.sleep(0)
        while not (_gate_threads() and _blocked_in_the_kernel(_gate_threads())):
            await asyncio.sleep(0.005)  # until every waiting thread is blocked in flock
        assert not next_write.done()
        fcntl.flock(holder, fcntl.LOCK_UN)
        busy_until = time.monotonic() + 0.05
        while time.monotonic() < busy_until:  # the loop busy, holding the GIL, as in service
            pass
        assert await asyncio.wait_for(next_write, 5.0)
        while _gate_threads():
            await asyncio.sleep(0.005)  # every waiting thread has decided
        with pytest.raises(BlockingIOError):
            fcntl.flock(other_process, fcntl.LOCK_EX | fcntl.LOCK_NB)
        gate.release()
        fcntl.flock(other_process, fcntl.LOCK_EX | fcntl.LOCK_NB)  # and free once it lets go
    finally:
        gate.close()
        os.close(holder)
        os.close(other_process)


def _writer_held() -> float:
    return REGISTRY.get_sample_value("webhook_service_sqlite_writer_held_seconds_total") or 0.0


@pytest.mark.skipif(ON_POSTGRES, reason="the writer gate is the SQLite engine's")
async def test_the_time_a_transaction_holds_the_writer_is_reported(runtime, monkeypatch):
    """What tells an operator SQLite's one writer has become the ceiling: the seconds each process
    holds it. A transaction that keeps the writer 0.2 s adds at least that much, reported shortly
    after (a second in service, here a tenth), with no further write needed to report it."""
    monkeypatch.setattr(writer_gate, "PUBLISH_EVERY", 0.1)
    before = _writer_held()
    async with runtime.db.sessions() as session:
        await leases.touch(session, "gate-metrics")  # the first write takes the writer
        await asyncio.sleep(0.2)  # the transaction's own work, holding it
        await session.commit()
    deadline = time.monotonic() + 5.0
    while _writer_held() - before < 0.2 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)  # until the report comes
    assert _writer_held() - before >= 0.2


@pytest.mark.skipif(ON_POSTGRES, reason="held through the SQLite writer gate")
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")  # a gate thread must not fail
async def test_a_duty_whose_lease_cannot_be_renewed_stops_before_the_lease_runs_out(runtime):
    """The database refuses the holder's renewals (another process keeps the write turn): the duty's
    work is stopped while its lease still holds, so no other worker can have taken it over yet."""
    runtime.settings.duty_lease_seconds = 3.0
    loop = asyncio.get_running_loop()
    running = asyncio.Event()
    stopped: list[float] = []

    async def work(_runtime) -> None:
        running.set()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.append(loop.time())

    holding = asyncio.create_task(hold(runtime, Duty("outage-test", work)))
    try:
        await asyncio.wait_for(running.wait(), 10)
        taken_at = loop.time()  # the lease was asked for before this: it runs out by taken_at + 3 s
        database = make_url(runtime.settings.database_url).database
        holder = os.open(f"{database}-writer.lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(holder, fcntl.LOCK_EX)
        try:
            while not stopped:
                assert loop.time() - taken_at < 10, "the duty never stopped"
                await asyncio.sleep(0.05)
        finally:
            fcntl.flock(holder, fcntl.LOCK_UN)
            os.close(holder)
        assert stopped[0] - taken_at < 3.0, f"the duty ran {stopped[0] - taken_at:.2f} s, past its lease"
    finally:
        holding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await holding
