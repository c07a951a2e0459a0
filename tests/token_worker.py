"""A second OS process for the multi-process token tests: N concurrent calls for one tenant.

Run as a script it prints ``ready`` once connected, waits for ``go`` on stdin, then prints a JSON
report. :func:`run_workers` is the test's side: it starts several, releases them together and
collects their reports.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from webhook_service.config import Settings, get_settings
from webhook_service.core.logs import configure_logging
from webhook_service.runtime import Runtime
from webhook_service.storage import tenants as tenant_store


async def main(tenant_id: str, calls: int) -> None:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    async with Runtime.open(settings, migrate_schema=False) as runtime:
        async with runtime.db.sessions() as session:
            tenant = await tenant_store.get(session, tenant_id)
        assert tenant is not None, tenant_id
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        results = await asyncio.gather(
            *(runtime.freshbooks.list_page(tenant, "client") for _ in range(calls)), return_exceptions=True
        )
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    print(json.dumps({"ok": calls - len(errors), "errors": errors}))


def run_workers(
    settings: Settings,
    simulator: Any,
    tenant_id: str,
    cwd: Path,
    *,
    workers: int = 2,
    calls: int = 25,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> list[dict[str, Any]]:
    """Start ``workers`` processes, release them at once when all are connected, return their reports.

    ``env`` adds settings (e.g. ``TOKEN_REFRESH_LEASE_SECONDS``) to the ones naming the test's
    database and simulator. A worker that fails fails the test with its stderr.
    """
    environment = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "SECRET_KEY": settings.secret_key.get_secret_value() if settings.secret_key else "",
        "FRESHBOOKS_API_BASE": simulator.base_url,
        "FRESHBOOKS_CLIENT_ID": simulator.state.client_id,
        "FRESHBOOKS_CLIENT_SECRET": simulator.state.client_secret,
        "AUTO_MIGRATE": "never",
        "LOG_FORMAT": "json",
        **(env or {}),
    }
    started = [
        subprocess.Popen(
            [sys.executable, __file__, tenant_id, str(calls)],
            env=environment,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
        )
        for _ in range(workers)
    ]
    try:
        for worker in started:  # all are connected and waiting: release them together
            assert worker.stdout is not None and worker.stdin is not None
            line = worker.stdout.readline().strip()
            assert line == "ready", (line, worker.stderr.read() if worker.poll() is not None and worker.stderr else "")
        for worker in started:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        reports = []
        for worker in started:
            out, err = worker.communicate(timeout=timeout)
            assert worker.returncode == 0, err
            reports.append(json.loads(out))
        return reports
    finally:
        for worker in started:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
