"""The SQLite library Python was built with is checked when the engine is made: a build too old for
the service's SQL is one clear line naming DATABASE_URL, not a syntax error in the first claim."""

from __future__ import annotations

import sqlite3

import pytest

from webhook_service.config import ConfigurationError
from webhook_service.storage import database
from webhook_service.storage.database import SQLITE_MINIMUM, create_engine, sqlite_library_problem


def test_this_machines_sqlite_is_enough():
    assert sqlite3.sqlite_version_info >= SQLITE_MINIMUM
    assert sqlite_library_problem() is None


def test_a_sqlite_without_returning_is_named_with_what_to_do():
    problem = sqlite_library_problem((3, 31, 1))
    assert problem == "this Python's SQLite is 3.31.1; the service needs 3.35.0 or newer (or PostgreSQL)"


def test_an_old_sqlite_stops_the_engine_being_made(monkeypatch, tmp_path):
    monkeypatch.setattr(database, "sqlite_library_problem", lambda: "this Python's SQLite is 3.31.1; ...")
    with pytest.raises(ConfigurationError, match=r"^DATABASE_URL: this Python's SQLite is 3\.31\.1") as raised:
        create_engine(f"sqlite+aiosqlite:///{tmp_path}/x.db")
    assert raised.value.setting == "DATABASE_URL"
    assert not (tmp_path / "x.db").exists()
