"""What an operator sees when the configuration or the command line is wrong: one line, exit 2.

A configuration error names the setting and what to do, never shows a password, and comes before
any work (``serve`` has not bound its port); a usage error prints the command's usage first.
"""

from __future__ import annotations

import os

import pytest
from test_cli import _run

from webhook_service.core.crypto import generate_key

PASSWORD = "s3cret-Pa55"
KEY = generate_key()

# name -> (environment, working directory holds `data` as a plain file, setting named, words of the fix)
CONFIGURATIONS = {
    "not a URL": ({"DATABASE_URL": "garbage"}, False, "DATABASE_URL", "sqlite+aiosqlite:///"),
    "PostgreSQL without its async driver": (
        {"DATABASE_URL": f"postgresql://ops:{PASSWORD}@127.0.0.1:1/hooks"},
        False,
        "DATABASE_URL",
        "use postgresql+asyncpg://ops:***@127.0.0.1:1/hooks",
    ),
    "SQLite without its async driver": (
        {"DATABASE_URL": "sqlite:///./hooks.db"},
        False,
        "DATABASE_URL",
        "use sqlite+aiosqlite:///./hooks.db",
    ),
    "MySQL": ({"DATABASE_URL": f"mysql://ops:{PASSWORD}@127.0.0.1:1/hooks"}, False, "DATABASE_URL", "not supported"),
    "an unreachable database": (
        {"DATABASE_URL": f"postgresql+asyncpg://ops:{PASSWORD}@127.0.0.1:1/hooks"},
        False,
        "DATABASE_URL",
        "cannot connect to 'postgresql+asyncpg://ops:***@127.0.0.1:1/hooks'",
    ),
    "./data unusable for the development key": ({"DEV_MODE": "true"}, True, "DEV_SECRET_KEY_FILE", "SECRET_KEY"),
    "./data unusable for the default database": ({}, True, "DATABASE_URL", "cannot create the directory"),
    "PORT not a number": ({"PORT": "abc"}, False, "PORT", "'abc' is not valid (input should be a valid integer"),
    "an unknown FreshBooks noun": ({"FRESHBOOKS_EVENTS": "invoice invoicez"}, False, "FRESHBOOKS_EVENTS", "'invoicez'"),
    "a CIDR that is not one": (
        {"OUTBOUND_ALLOWED_CIDRS": "10.0.0.0/8,10.0.0.0/99"},
        False,
        "OUTBOUND_ALLOWED_CIDRS",
        "'10.0.0.0/99' is not a network",
    ),
}


@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["tenants", "list"]], ids=" ".join)
@pytest.mark.parametrize("case", CONFIGURATIONS)
def test_a_bad_configuration_is_one_line_naming_the_setting(tmp_path, case, command):
    env, data_is_a_file, setting, fix = CONFIGURATIONS[case]
    if data_is_a_file:  # ./data can be neither created nor written (as root, permissions would not stop it)
        (tmp_path / "data").write_text("not a directory")
    env = {"SECRET_KEY": KEY, **env} if "DEV_MODE" not in env else env
    result = _run(command, env, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {setting}: "), line
    assert fix in line
    assert "Traceback" not in result.stderr
    assert PASSWORD not in result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permissions")
def test_a_read_only_data_directory_is_named(tmp_path):
    (tmp_path / "data").mkdir(mode=0o500)
    for env, setting in (({"DEV_MODE": "true"}, "DEV_SECRET_KEY_FILE"), ({"SECRET_KEY": KEY}, "DATABASE_URL")):
        result = _run(["tenants", "list"], env, cwd=tmp_path)
        assert result.returncode == 2
        [line] = result.stderr.splitlines()
        assert line.startswith(f"error: {setting}: "), line


def test_migrate_names_an_unreachable_database(tmp_path):
    url = f"postgresql+asyncpg://ops:{PASSWORD}@127.0.0.1:1/hooks"
    result = _run(["migrate"], {"SECRET_KEY": KEY, "DATABASE_URL": url}, cwd=tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("error: DATABASE_URL: cannot connect to") and PASSWORD not in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["backfill"], "choose --tenant ID or --all"),
        (["callbacks", "sync"], "one of the arguments --tenant --all is required"),
        (["backfill", "status", "--all"], "`backfill status` takes no --all"),
        (["backfill", "--all", "--resources", "invoices"], "unknown resources ['invoices']"),
        (["backfill", "--all", "--since", "yesterday"], "not a time: 'yesterday'"),
        (["deliveries", "recover", "--subscription", "sub_x", "--since", "2026-11-21T10:00:00"], "no time zone"),
        (["subscriptions", "update", "sub_x"], "nothing to change"),
        (["subscriptions", "update", "sub_x", "--rate-limit", "5", "--no-rate-limit"], "not allowed with"),
        (["tenants", "import", "--business-id", "439000"], "--refresh-token --resume is required"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else "",
)
def test_usage_errors_exit_2_before_any_work(tmp_path, args, message):
    database = tmp_path / "service.db"
    result = _run(args, {"SECRET_KEY": KEY, "DATABASE_URL": f"sqlite+aiosqlite:///{database}"}, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"usage: webhook-service {args[0]}")
    assert message in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr
    assert not database.exists()  # refused before the database was opened
