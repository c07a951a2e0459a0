"""The least any durable deliverer does, with none of the service's code: the floor under
``bench_delivery``'s deliveries/s.

A delivery is durable when its lease is committed before it is sent and its outcome after, so a
crash neither loses it nor sends it twice unseen. Here that is done with nothing around it: one
SQLite file (WAL, ``synchronous=FULL``, as the service opens it), a table of deliveries with the
partial index a claim walks, a table of attempts with the unique key an attempt number has, and
Python's ``sqlite3`` on one thread of its own, in turns. Claims lease as many due rows as there is
room for (``UPDATE ... RETURNING``); each delivery is POSTed by a task of its own through one
``aiohttp`` session (the bare loop's client); outcomes are group-committed (one ``UPDATE`` of the
delivery, fenced on its lease, and one attempt row each). No signature, no egress check, no ORM, no
metrics, no log line: what is left between this and the bare loop is what durability costs on this
stack, and what is left between the service and this is the service's own work.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import aiohttp

LEASE = "floor"
HEADERS = {"content-type": "application/json"}


def open_durable(path: str) -> sqlite3.Connection:
    """A SQLite file as the service opens it (WAL, ``synchronous=FULL``: a commit is on the disk),
    its transactions begun explicitly; usable from the one thread that writes (the floors' own)."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    return db


class GroupCommit:
    """Rows written together by ``write``, one commit at a time on ``thread``; each caller waits for
    the commit that holds its row (both floors' group commit)."""

    def __init__(self, thread: ThreadPoolExecutor, write: Callable[[list[tuple[object, ...]]], None]) -> None:
        self._thread = thread
        self._write = write
        self._queued: list[tuple[tuple[object, ...], asyncio.Future[None]]] = []
        self._flushing = False

    async def add(self, row: tuple[object, ...]) -> None:
        done = asyncio.get_running_loop().create_future()
        self._queued.append((row, done))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush())
        await done

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                try:
                    await loop.run_in_executor(self._thread, self._write, [row for row, _ in batch])
                except Exception as exc:  # noqa: BLE001 (each waiter gets the failure: nothing was kept)
                    for _, done in batch:
                        done.set_exception(exc)
                else:
                    for _, done in batch:
                        done.set_result(None)
        finally:
            self._flushing = False


class FloorStore:
    """The deliveries and their attempts, written on one thread in turns."""

    def __init__(self, path: str, payloads: list[bytes]) -> None:
        self.db = open_durable(path)
        self.db.execute(
            "CREATE TABLE deliveries (id INTEGER PRIMARY KEY, payload BLOB, status TEXT, lease TEXT, "
            "next_attempt_at REAL, attempts INTEGER)"
        )
        self.db.execute("CREATE INDEX due ON deliveries (next_attempt_at) WHERE status IN ('pending', 'failed')")
        self.db.execute(
            "CREATE TABLE attempts (id INTEGER PRIMARY KEY, delivery_id INTEGER, number INTEGER, "
            "status_code INTEGER, started_at REAL, UNIQUE (delivery_id, number))"
        )
        self.db.execute("BEGIN")
        self.db.executemany(
            "INSERT INTO deliveries (payload, status, next_attempt_at, attempts) VALUES (?, 'pending', 0, 0)",
            [(payload,) for payload in payloads],
        )
        self.db.execute("COMMIT")
        self.thread = ThreadPoolExecutor(1)

    def claim(self, room: int) -> list[tuple[int, bytes, int]]:
        self.db.execute("BEGIN IMMEDIATE")
        rows = self.db.execute(
            "UPDATE deliveries SET lease = ? WHERE id IN (SELECT id FROM deliveries WHERE status IN "
            "('pending', 'failed') AND next_attempt_at <= ? AND lease IS NULL ORDER BY next_attempt_at "
            "LIMIT ?) RETURNING id, payload, attempts",
            (LEASE, time.time(), room),
        ).fetchall()
        self.db.execute("COMMIT")
        return rows

    def record(self, outcomes: list[tuple[object, ...]]) -> None:
        """``(delivery id, attempt number, status code)`` each."""
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany(
            "UPDATE deliveries SET status = CASE WHEN ? < 300 THEN 'succeeded' ELSE 'failed' END, lease = NULL, "
            "attempts = ? WHERE id = ? AND lease = ?",
            [(status, number, delivery, LEASE) for delivery, number, status in outcomes],
        )
        now = time.time()
        self.db.executemany(
            "INSERT INTO attempts (delivery_id, number, status_code, started_at) VALUES (?, ?, ?, ?)",
            [(delivery, number, status, now) for delivery, number, status in outcomes],
        )
        self.db.execute("COMMIT")

    def attempts(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM attempts").fetchone()[0])

    def close(self) -> None:
        self.thread.shutdown()
        self.db.close()


async def drain(store: FloorStore, url: str, concurrency: int, total: int) -> float:
    """Claim, send and record every delivery, ``concurrency`` in flight; the seconds it took."""
    loop = asyncio.get_running_loop()
    outcomes = GroupCommit(store.thread, store.record)
    room = concurrency
    freed = asyncio.Event()

    async def send(session: aiohttp.ClientSession, delivery: int, payload: bytes, attempts: int) -> None:
        nonlocal room
        async with session.post(url, data=payload, headers=HEADERS) as response:
            await response.read()
        room += 1
        if room >= concurrency // 4:
            freed.set()
        await outcomes.add((delivery, attempts + 1, response.status))

    sends = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        started = time.perf_counter()
        while len(sends) < total:
            freed.clear()
            rows = await loop.run_in_executor(store.thread, store.claim, room)
            room -= len(rows)
            sends += [loop.create_task(send(session, *row)) for row in rows]
            if len(sends) < total:
                await freed.wait()
        await asyncio.gather(*sends)  # every outcome committed
        return time.perf_counter() - started
