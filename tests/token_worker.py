"""A second OS process for the two-process token test: N concurrent calls for one tenant.

Prints ``ready`` once connected, waits for ``go`` on stdin, then prints a JSON report.
"""

from __future__ import annotations

import asyncio
import json
import sys

from webhook_service.config import get_settings
from webhook_service.logs import configure_logging
from webhook_service.runtime import Runtime
from webhook_service.storage import tenants as tenant_store


async def main(tenant_id: str, calls: int) -> None:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    async with Runtime.open(settings, migrate_schema=False) as runtime:
        async with runtime.db.sessions() as session:
            tenant = await tenant_store.get(session, tenant_id)
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        results = await asyncio.gather(
            *(runtime.freshbooks.list_page(tenant, "client") for _ in range(calls)), return_exceptions=True
        )
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    print(json.dumps({"ok": calls - len(errors), "errors": errors}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
