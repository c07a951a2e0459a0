"""What a webhook's share of the inbox's group commit costs the web process, step by step.

Run from the repository root::

    .venv/bin/python tests/benchmarks/bench_inbox.py [--batch 15] [--commits 400] [--database-url URL]

It prints figures and never asserts. In process, on a temporary SQLite file (or a fresh database
on the PostgreSQL server ``--database-url`` names) with the service's schema (its migrations), a
tenant and a callback: ``--commits`` group commits of ``--batch``
webhooks each (15 is what ``bench_scaling``'s ingest part sees at 32 in flight), written as the
inbox writer writes them (``storage.inbox.record_many`` in a ``bounded_session``, then the commit).
Each step's CPU is this thread's (``time.thread_time``), per webhook: opening the session, the
duplicate lookup, the insert, the callbacks' ``last_event_at``, and the commit (its thread's
``fsync`` is not counted, its hand-off is; nor is PostgreSQL's own CPU), with the garbage
collector as ``serve`` sets it (``freeze_heap``). The machine's load is printed beside the figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench_delivery import (  # a sibling: the script's directory is on sys.path
    Children,
    Databases,
    add_database_argument,
    checked_database_argument,
    run_benchmark,
)
from pydantic import SecretStr

import webhook_service.storage.inbox as inbox
from webhook_service.cli.service import freeze_heap
from webhook_service.config import Settings
from webhook_service.core.crypto import generate_key
from webhook_service.runtime import Runtime
from webhook_service.storage.columns import utcnow
from webhook_service.storage.models import Callback

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: the records shared with the tests
from records import tenant_row  # noqa: E402

STEPS = ("_originals", "_insert_with_ids", "_touch_callbacks")
"""The steps of ``record_many`` timed on their own (the rest of it is building the rows)."""


def timed(spent: Counter[str], name: str, step: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def run(*args: Any, **kwargs: Any) -> Any:
        started = time.thread_time()
        try:
            return await step(*args, **kwargs)
        finally:
            spent[name] += time.thread_time() - started

    return run


def arrivals(first: int, count: int) -> list[inbox.Arrival]:
    made = []
    for n in range(first, first + count):
        body = f"name=invoice.update&object_id={n}&account_id=ACC&business_id=1&identity_id=1&user_id=1"
        fields = dict(pair.split("=") for pair in body.split("&"))
        headers = {"content-type": "application/x-www-form-urlencoded", "x-freshbooks-hmac-sha256": "c2lnbmF0dXJl"}
        made.append(inbox.Arrival("cb_bench", "ten_bench", fields, body.encode(), headers, utcnow()))
    return made


async def run(args: argparse.Namespace, databases: Databases, procs: Children) -> None:
    batch, commits = args.batch, args.commits
    settings = Settings(
        database_url=await databases.create("inbox"),
        secret_key=SecretStr(generate_key()),
        _env_file=None,
        log_level="warning",
    )
    async with Runtime.open(settings, migrate_schema=True) as runtime:
        async with runtime.db.sessions() as session:
            session.add(tenant_row(runtime.box, "ten_bench", account_id="ACC", business_id=1, now=utcnow()))
            await session.flush()
            session.add(Callback(id="cb_bench", tenant_id="ten_bench", event="invoice", endpoint_key="k", uri="u"))
            await session.commit()
        freeze_heap()  # the garbage collector as `serve` sets it
        spent: Counter[str] = Counter()
        for name in STEPS:
            setattr(inbox, name, timed(spent, name, getattr(inbox, name)))
        touched: dict[str, Any] = {}  # the writer's own memory of its last_event_at writes
        window = timedelta(seconds=settings.inbox_dedupe_window)
        all_started = time.thread_time()
        for n in range(commits):
            group = arrivals(n * batch, batch)
            started = time.thread_time()
            async with runtime.db.bounded_session(settings.inbound_commit_timeout) as session:
                opened = time.thread_time()
                await inbox.record_many(session, group, dedupe_window=window, touched=touched)
                recorded = time.thread_time()
                await session.commit()
                spent["commit (its hand-off)"] += time.thread_time() - recorded
            spent["session"] += opened - started
            spent["record_many in all"] += recorded - opened
        whole = time.thread_time() - all_started
    webhooks = batch * commits
    print(f"== {commits} group commits of {batch} webhooks, {databases.backend}; load average {load()}")
    print(f"   all of it: {whole / webhooks * 1e6:6.1f} µs of CPU a webhook (the arrivals' making included)")
    for name, seconds in spent.most_common():
        print(f"   {name:<24} {seconds / webhooks * 1e6:6.1f} µs a webhook")


def load() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_database_argument(parser)
    parser.add_argument("--batch", type=int, default=15, help="webhooks per group commit (15)")
    parser.add_argument("--commits", type=int, default=400, help="group commits timed (400)")
    args = checked_database_argument(parser, parser.parse_args(argv))
    return run_benchmark(args, "bench-inbox-", run)


if __name__ == "__main__":
    sys.exit(main())
