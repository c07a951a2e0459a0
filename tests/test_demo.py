"""``webhook-service demo``, run as a newcomer would: a separate process on a fresh working directory.

The demo always uses its own temporary SQLite database, so these tests ignore TEST_DATABASE_URL.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

TIMEOUT_SECONDS = 60
LIVE_CHANGES = 5  # client, invoice, invoice update, project, invoice delete


def _env() -> dict[str, str]:
    drop = {"DATABASE_URL", "TEST_DATABASE_URL", "SECRET_KEY", "DEV_MODE", "ADMIN_TOKEN"}
    return {k: v for k, v in os.environ.items() if k not in drop}


# ``python -m webhook_service ARGS`` with Ctrl-C handled as on a terminal: a test runner started in the
# background inherits an ignored SIGINT, which Python would otherwise keep ignoring in the child.
_AS_FROM_A_TERMINAL = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'webhook-service'; runpy.run_module('webhook_service', run_name='__main__')"
)


def _demo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "webhook_service", "demo", *args],
        env=_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
    )


def test_demo_narrates_the_whole_pipeline_and_cleans_up(tmp_path):
    result = _demo(cwd=tmp_path)
    out = result.stdout

    assert result.returncode == 0, out + result.stderr
    assert "Traceback" not in out + result.stderr
    assert result.stderr == ""  # the service's log went to its file, not over the narration
    assert re.search(r"tenant connected: ten_\w+ +Awesome Inc\. \(business 439000, account ABC123\)", out)
    verified = re.search(r"callbacks verified: (\d+) of (\d+)", out)
    assert verified and verified.group(1) == verified.group(2) and int(verified.group(1)) > 0
    assert re.search(r"signing secret created: whsec_\S{4}\.\.\. ", out)

    live = re.findall(r"<- (\S+) .*\[webhook, signature verified, evt_\w+\]", out)
    assert live == ["client.created", "invoice.created", "invoice.updated", "project.created", "invoice.deleted"]
    assert "dropped the client.update webhook" in out
    assert "the service's inbox has no client.update" in out
    recovered = re.findall(r"<- (\S+) +(.*)\[backfill, signature verified, evt_\w+\]", out)
    assert len(recovered) == 1
    assert recovered[0][0] == "client.updated" and "Difference Engines Ltd" in recovered[0][1]
    assert "6 events delivered to the subscriber (5 from webhook, 1 from backfill), 6 Standard Webhooks" in out
    assert "SIGNATURE INVALID" not in out

    removed = re.search(r"removed (\S*webhook-service-demo-\S+)", out)
    assert removed and not Path(removed.group(1)).exists()
    assert list(tmp_path.iterdir()) == []  # nothing written to the working directory


def test_json_lines_then_ctrl_c_while_kept_running_shuts_everything_down(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-c", _AS_FROM_A_TERMINAL, "demo", "--keep-running", "--json"],
        env=_env(),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True)
    reader.start()
    try:
        records = [json.loads(lines.get(timeout=TIMEOUT_SECONDS))]
        while records[-1]["kind"] != "keep_running":
            records.append(json.loads(lines.get(timeout=TIMEOUT_SECONDS)))
        up = records[-1]
        received = [r for r in records if r["kind"] == "received"]
        assert [r["origin"] for r in received] == ["webhook"] * LIVE_CHANGES + ["backfill"]
        assert all(r["signature_verified"] for r in received)
        assert len({r["id"] for r in received}) == len(received)
        assert next(r for r in records if r["kind"] == "backfill")["emitted"] == 1
        dropped = next(i for i, r in enumerate(records) if r["kind"] == "dropped")
        assert records.index(received[-1]) > dropped  # the recovered event arrived after the drop

        events = httpx.get(
            f"{up['service_url']}/admin/v1/events", headers={"Authorization": f"Bearer {up['admin_token']}"}
        )
        listed = events.json()["data"]  # still up, and its admin API answers
        assert len([e for e in listed if e["origin"] != "service"]) == LIVE_CHANGES + 1
        assert [e["type"] for e in listed if e["origin"] == "service"] == ["backfill.recovered"]

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=TIMEOUT_SECONDS) == 0
        reader.join(TIMEOUT_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    rest = [json.loads(lines.get_nowait()) for _ in range(lines.qsize())]
    assert [r["kind"] for r in rest[-2:]] == ["interrupted", "cleanup"]
    assert rest[-1]["removed"] is True and not Path(rest[-1]["workdir"]).exists()
    assert "Traceback" not in process.stderr.read()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{up['service_url']}/healthz", timeout=2)
