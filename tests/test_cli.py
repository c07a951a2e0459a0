"""The command line, run as an operator would: a separate process, env-configured."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def _run(args, env_extra=None, cwd=None):
    env = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DEV_MODE", "DATABASE_URL"}}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "webhook_service", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_help_lists_the_commands():
    result = _run(["--help"])
    assert result.returncode == 0
    for command in ("serve", "migrate", "simulator", "tenants", "generate-secret-key"):
        assert command in result.stdout
    tenants = _run(["tenants", "--help"])
    for command in ("import", "list", "show", "disconnect"):
        assert command in tenants.stdout


def test_service_refuses_to_start_without_a_key(tmp_path):
    result = _run(["serve", "--port", "0"], {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/x.db"}, cwd=tmp_path)
    assert result.returncode == 2  # a configuration error, like any other: one line, before binding
    assert "SECRET_KEY is not set" in result.stderr
    assert "DEV_MODE" in result.stderr
    assert "Traceback" not in result.stderr


def test_dev_mode_creates_a_private_key_once(tmp_path):
    env = {"DEV_MODE": "true", "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/x.db"}
    assert _run(["tenants", "list", "--json"], env, cwd=tmp_path).stdout.strip() == "[]"
    key_file = tmp_path / "data" / "dev-secret.key"
    key = key_file.read_text()
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert _run(["tenants", "list"], env, cwd=tmp_path).returncode == 0
    assert key_file.read_text() == key


def test_import_list_show_disconnect(cli_env, simulator, tmp_path):
    token = simulator.state.issue_refresh_token()
    imported = _run(
        ["tenants", "import", "--refresh-token", token, "--business-id", "439000", "--json"], cli_env, cwd=tmp_path
    )
    assert imported.returncode == 0, imported.stderr
    tenant = json.loads(imported.stdout)
    assert (tenant["account_id"], tenant["business_id"], tenant["status"]) == ("ABC123", 439000, "active")
    assert token not in imported.stdout + imported.stderr

    listed = json.loads(_run(["tenants", "list", "--json"], cli_env, cwd=tmp_path).stdout)
    assert [t["id"] for t in listed] == [tenant["id"]]
    shown = json.loads(_run(["tenants", "show", tenant["id"], "--json"], cli_env, cwd=tmp_path).stdout)
    assert shown["name"] == "Awesome Inc."
    assert not any("token" in key and key not in {"access_expires_at"} for key in shown)

    revoked_before = len([r for r in simulator.state.requests if r["path"] == "/auth/oauth/revoke"])
    gone = _run(["tenants", "disconnect", tenant["id"], "--json"], cli_env, cwd=tmp_path)
    assert gone.returncode == 0, gone.stderr
    assert json.loads(gone.stdout)["status"] == "disconnected"
    assert json.loads(gone.stdout)["revoked"] is True
    assert len([r for r in simulator.state.requests if r["path"] == "/auth/oauth/revoke"]) == revoked_before + 1
    assert json.loads(_run(["tenants", "list", "--json"], cli_env, cwd=tmp_path).stdout)[0]["status"] == "disconnected"
    again = _run(["tenants", "disconnect", tenant["id"]], cli_env, cwd=tmp_path)
    assert again.returncode == 1 and "already disconnected" in again.stderr


def test_import_reused_token_fails_cleanly(cli_env, simulator, tmp_path):
    token = simulator.state.issue_refresh_token()
    assert (
        _run(
            ["tenants", "import", "--refresh-token", token, "--business-id", "439000"], cli_env, cwd=tmp_path
        ).returncode
        == 0
    )
    again = _run(["tenants", "import", "--refresh-token", token, "--business-id", "439000"], cli_env, cwd=tmp_path)
    assert again.returncode == 1
    assert "invalid_grant" in again.stderr
    assert "Traceback" not in again.stderr


def test_import_with_several_businesses_asks_then_resumes(cli_env, simulator, tmp_path):
    first = _run(
        ["tenants", "import", "--refresh-token", simulator.state.issue_refresh_token(), "--json"], cli_env, cwd=tmp_path
    )
    assert first.returncode == 1
    choice = json.loads(first.stdout)
    assert choice["status"] == "choose_business"
    assert {b["business_id"] for b in choice["businesses"]} == {439000, 439001}
    resumed = _run(
        ["tenants", "import", "--resume", choice["pending_id"], "--business-id", "439001", "--json"],
        cli_env,
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["account_id"] == "XYZ789"
    listed = json.loads(_run(["tenants", "list", "--json"], cli_env, cwd=tmp_path).stdout)
    assert len(listed) == 1


def test_secret_key_rotation(cli_env, simulator, tmp_path):
    from webhook_service.core.crypto import generate_key

    token = simulator.state.issue_refresh_token()
    assert (
        _run(
            ["tenants", "import", "--refresh-token", token, "--business-id", "439000"], cli_env, cwd=tmp_path
        ).returncode
        == 0
    )
    old_key, new_key = cli_env["SECRET_KEY"], generate_key()
    rotated = _run(["rotate-secret-key"], {**cli_env, "SECRET_KEY": f"{new_key},{old_key}"}, cwd=tmp_path)
    assert rotated.returncode == 0, rotated.stderr
    assert "re-encrypted 2 secrets" in rotated.stdout

    # the old key alone can no longer read them; the new key alone can, and the grant still works
    listed = json.loads(_run(["tenants", "list", "--json"], {**cli_env, "SECRET_KEY": new_key}, cwd=tmp_path).stdout)
    refused = _run(["tenants", "disconnect", listed[0]["id"]], {**cli_env, "SECRET_KEY": old_key}, cwd=tmp_path)
    assert refused.returncode == 1
    assert "cannot be decrypted" in refused.stderr
    revokes = len([r for r in simulator.state.requests if r["path"] == "/auth/oauth/revoke"])
    gone = _run(["tenants", "disconnect", listed[0]["id"], "--json"], {**cli_env, "SECRET_KEY": new_key}, cwd=tmp_path)
    assert gone.returncode == 0, gone.stderr
    assert json.loads(gone.stdout)["revoked"] is True
    assert len([r for r in simulator.state.requests if r["path"] == "/auth/oauth/revoke"]) == revokes + 1


def test_callbacks_sync_and_list_with_the_service_running(cli_env, service, simulator, tmp_path):
    imported = _run(
        [
            "tenants",
            "import",
            "--refresh-token",
            simulator.state.issue_refresh_token(),
            "--business-id",
            "439000",
            "--json",
        ],
        cli_env,
        cwd=tmp_path,
    )
    assert imported.returncode == 0, imported.stderr
    report = json.loads(imported.stdout)["callbacks"]
    assert report["error"] is None and len(report["created"]) == 15
    service.settle()

    listed = json.loads(_run(["callbacks", "list", "--json"], cli_env, cwd=tmp_path).stdout)
    assert len(listed) == 15
    assert {c["state"] for c in listed} == {"verified"}
    assert all(c["last_event_at"] is None for c in listed)
    assert not any("verifier" in key or "key" in key for key in listed[0])

    synced = _run(["callbacks", "sync", "--all", "--json"], cli_env, cwd=tmp_path)
    assert synced.returncode == 0, synced.stderr
    [again] = json.loads(synced.stdout)
    assert (again["created"], again["deleted"], again["resent"]) == ([], [], [])
    human = _run(["callbacks", "sync", "--tenant", listed[0]["tenant_id"]], cli_env, cwd=tmp_path)
    assert "in sync (15 callbacks)" in human.stdout
    assert _run(["callbacks", "sync", "--tenant", "ten_nope"], cli_env, cwd=tmp_path).returncode == 1


async def test_subscriptions_and_deliveries_commands(cli_env, runtime, tenant, tmp_path):
    from test_delivery import _emit  # noqa: PLC0415

    created = _run(
        [
            "subscriptions",
            "create",
            "--url",
            "https://hooks.example.com/in",
            "--events",
            "invoice.*",
            "--rate-limit",
            "5",
            "--json",
        ],
        cli_env,
        cwd=tmp_path,
    )
    assert created.returncode == 0, created.stderr
    subscription = json.loads(created.stdout)
    assert subscription["secret"].startswith("whsec_") and subscription["event_types"] == ["invoice.*"]

    listed = _run(["subscriptions", "list", "--json"], cli_env, cwd=tmp_path)
    assert [s["id"] for s in json.loads(listed.stdout)] == [subscription["id"]]
    assert "whsec_" not in listed.stdout
    bad = _run(["subscriptions", "create", "--url", "http://10.1.2.3/x"], cli_env, cwd=tmp_path)
    assert bad.returncode == 1 and "private" in bad.stderr

    rotated = json.loads(
        _run(
            ["subscriptions", "rotate-secret", subscription["id"], "--grace-hours", "2", "--json"],
            cli_env,
            cwd=tmp_path,
        ).stdout
    )
    assert rotated["secret"] != subscription["secret"] and rotated["previous_secret_valid_until"]
    updated = json.loads(
        _run(["subscriptions", "update", subscription["id"], "--no-rate-limit", "--json"], cli_env, cwd=tmp_path).stdout
    )
    assert updated["rate_limit_per_second"] is None

    async def dead_delivery():
        from sqlalchemy import update

        from webhook_service.storage.columns import utcnow
        from webhook_service.storage.models import Delivery

        await _emit(runtime, tenant, utcnow())
        async with runtime.db.sessions() as session:
            await session.execute(update(Delivery).values(status="dead", attempts=8, last_error="HTTP 500"))
            await session.commit()

    await dead_delivery()
    dead = json.loads(_run(["deliveries", "list", "--status", "dead", "--json"], cli_env, cwd=tmp_path).stdout)
    assert len(dead) == 1 and dead[0]["subscription_id"] == subscription["id"]
    shown = json.loads(_run(["deliveries", "show", dead[0]["id"], "--json"], cli_env, cwd=tmp_path).stdout)
    assert shown["attempt_log"] == []
    recovered = _run(
        ["deliveries", "recover", "--subscription", subscription["id"], "--since", "1h", "--json"],
        cli_env,
        cwd=tmp_path,
    )
    assert json.loads(recovered.stdout)["recovered"] == [dead[0]["id"]]
    assert _run(["deliveries", "list", "--status", "dead", "--json"], cli_env, cwd=tmp_path).stdout.strip() == "[]"
    again = _run(["deliveries", "replay", dead[0]["id"]], cli_env, cwd=tmp_path)
    assert again.returncode == 1 and "already queued" in again.stderr
    naive = _run(
        ["deliveries", "recover", "--subscription", subscription["id"], "--since", "2026-11-21T10:00:00"],
        cli_env,
        cwd=tmp_path,
    )
    assert naive.returncode == 2 and "time zone" in naive.stderr  # a usage error: argparse refuses the time
    assert _run(["subscriptions", "delete", subscription["id"]], cli_env, cwd=tmp_path).returncode == 0


async def test_events_and_inbox_commands(cli_env, runtime, tenant, tmp_path):
    from test_delivery import _emit

    from webhook_service.storage.columns import utcnow

    event = await _emit(runtime, tenant, utcnow(), name="client.update")
    listed = json.loads(_run(["events", "list", "--type", "client.updated", "--json"], cli_env, cwd=tmp_path).stdout)
    assert [e["id"] for e in listed] == [event.id] and "payload" not in listed[0]
    shown = json.loads(_run(["events", "show", event.id], cli_env, cwd=tmp_path).stdout)
    assert shown["payload"]["type"] == "client.updated"
    assert json.loads(_run(["inbox", "list", "--json"], cli_env, cwd=tmp_path).stdout) == []
    assert _run(["events", "show", "evt_nope"], cli_env, cwd=tmp_path).returncode == 1
