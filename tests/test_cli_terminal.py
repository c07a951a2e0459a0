"""The CLI on a real terminal: a pseudo-terminal of a set width, the width rich finds by itself.

A secret is printed whole on its own line, and no identifier in a list is shortened, whatever the
width: the operator copies them into ``show``, ``replay`` and their subscriber's configuration.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from test_cli import _run
from test_delivery import _emit

from webhook_service.backfill.sweep import backfill_tenant
from webhook_service.delivery import subscriptions
from webhook_service.storage.columns import utcnow

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
SECRET = re.compile(r"whsec_[A-Za-z0-9+/=]+")


@dataclass
class Terminal:
    returncode: int
    text: str
    """What the terminal showed (stdout and stderr), without colour codes, with plain newlines."""


def _on_terminal(args: list[str], env_extra: dict[str, str], cwd, columns: int = 80) -> Terminal:
    """Run the CLI with stdin, stdout and stderr on a pseudo-terminal ``columns`` wide."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    drop = {"SECRET_KEY", "DEV_MODE", "DATABASE_URL", "COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE"}
    env = {k: v for k, v in os.environ.items() if k not in drop} | {"TERM": "xterm-256color"} | env_extra
    process = subprocess.Popen(
        [sys.executable, "-m", "webhook_service", *args], stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd
    )
    os.close(slave)
    shown = bytearray()
    deadline = time.monotonic() + 60
    try:
        while True:  # until every copy of the slave is closed (EIO), i.e. the command has exited
            if not select.select([master], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise AssertionError(f"{args} still running after 60 s; so far: {bytes(shown)!r}")
            try:
                chunk = os.read(master, 65536)
            except OSError as exc:
                if exc.errno != errno.EIO:
                    raise
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
    returncode = process.wait(timeout=60)
    return Terminal(returncode, ANSI.sub("", shown.decode("utf-8", "replace")).replace("\r\n", "\n"))


@pytest.fixture
def terminal_env(cli_env):
    return {**cli_env, "OUTBOUND_ALLOWED_CIDRS": "127.0.0.0/8"}  # subscribers here are the local sink


async def _signing_secrets(runtime, subscription_id: str) -> list[str]:
    """The secrets the service signs this subscription's deliveries with now (stored encrypted)."""
    subscription = await subscriptions.get(runtime, subscription_id)
    return subscriptions.secrets_for_signing(runtime, subscription, utcnow())


def _secret_line(shown: Terminal) -> str:
    """The one line holding a ``whsec_`` secret, which must hold nothing else."""
    [line] = [line for line in shown.text.splitlines() if "whsec_" in line]
    assert SECRET.fullmatch(line.strip()), line
    return line.strip()


@pytest.mark.parametrize("columns", [80, 40])
async def test_subscription_secrets_are_printed_whole_on_their_own_line(runtime, sink, terminal_env, tmp_path, columns):
    created = _on_terminal(
        [
            *("subscriptions", "create", "--url", f"{sink.base_url}/a/rather/long/path/for/the/subscriber/endpoint"),
            *("--events", "invoice.*", "client.*", "--description", "the ledger sync: every invoice and client change"),
        ],
        terminal_env,
        tmp_path,
        columns,
    )
    assert created.returncode == 0, created.text
    assert "…" not in created.text
    [subscription_id] = re.findall(r"\bsub_[0-9a-f]{20}\b", created.text)
    secret = _secret_line(created)
    assert await _signing_secrets(runtime, subscription_id) == [secret]  # what the subscriber must verify with
    assert "not shown again" in created.text

    rotated = _on_terminal(["subscriptions", "rotate-secret", subscription_id], terminal_env, tmp_path, columns)
    assert rotated.returncode == 0, rotated.text
    assert "…" not in rotated.text
    new_secret = _secret_line(rotated)
    assert new_secret != secret
    assert await _signing_secrets(runtime, subscription_id) == [new_secret, secret]  # the old one for the grace period


LISTS = {  # command -> the identifier columns its table shows
    ("tenants", "list"): ("id", "account_id", "business_id"),
    ("subscriptions", "list"): ("id", "tenant_id"),
    ("events", "list"): ("id", "tenant_id", "object_id"),
    ("deliveries", "list"): ("id", "subscription_id", "event_id"),
    ("callbacks", "list"): ("id", "tenant_id", "freshbooks_callback_id"),
    ("backfill", "status"): ("tenant_id",),
}


async def test_lists_print_whole_identifiers(connected, runtime, sink, terminal_env, tmp_path):
    await subscriptions.create(runtime, {"url": f"{sink.base_url}/all", "tenant_id": connected.id})
    await _emit(runtime, connected, utcnow(), object_id="1234567")
    await backfill_tenant(runtime, connected, since=datetime.now(UTC) - timedelta(hours=1), resources=["client"])
    for command, identifiers in LISTS.items():
        listed = _run([*command, "--json"], terminal_env, cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        rows = json.loads(listed.stdout)
        assert rows, command
        for columns in (80, 120):  # 80: most lists fall back to blocks; 120: most are still tables
            shown = _on_terminal(list(command), terminal_env, tmp_path, columns)
            assert shown.returncode == 0, shown.text
            assert "…" not in shown.text, shown.text
            words = set(re.findall(r"[\w.-]+", shown.text))  # each identifier must stand whole between separators
            for row in rows:
                for key in identifiers:
                    assert str(row[key]) in words, (
                        f"{' '.join(command)} at {columns} columns: {key} {row[key]}\n{shown.text}"
                    )
            assert max(len(line) for line in shown.text.splitlines()) <= columns  # and nothing ran off the screen
