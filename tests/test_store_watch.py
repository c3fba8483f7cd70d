"""StoreWatch: a server skips its alias lookup while the SQLite registry is unchanged."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from modelcycle.registry import StoreWatch
from serving_fixtures import ServedWorkspace


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _write(db: Path, value: int) -> None:
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS t (v INTEGER)")
        connection.execute("INSERT INTO t VALUES (?)", (value,))


def test_unchanged_store_answers_no_until_a_write_or_the_refresh(tmp_path: Path) -> None:
    db, clock = tmp_path / "mlflow.db", Clock()
    _write(db, 1)
    watch = StoreWatch(f"sqlite:///{db}", refresh_seconds=60, clock=clock)
    assert watch.may_have_changed("twins")  # first look: nothing known yet
    assert not watch.may_have_changed("twins")
    assert watch.may_have_changed("image")  # each key looks for itself
    _write(db, 2)
    assert watch.may_have_changed("twins") and watch.may_have_changed("image")
    assert not watch.may_have_changed("twins")
    clock.now = 59.0
    assert not watch.may_have_changed("twins")
    clock.now = 60.0
    assert watch.may_have_changed("twins")  # the refresh, for coarse file times


def test_a_store_that_appears_or_is_not_local_sqlite_may_have_changed(tmp_path: Path) -> None:
    db = tmp_path / "later.db"
    watch = StoreWatch(f"sqlite:///{db}")
    assert watch.may_have_changed("twins") and not watch.may_have_changed("twins")
    _write(db, 1)
    assert watch.may_have_changed("twins")
    for uri in ("http://127.0.0.1:5000", "postgresql://u@host/db", "databricks"):
        remote = StoreWatch(uri)
        assert remote.may_have_changed("twins") and remote.may_have_changed("twins")


def test_an_alias_move_through_mlflow_is_seen(two_versions: ServedWorkspace) -> None:
    """The real registry: reading it leaves the stamp alone, promoting changes it."""
    registry = two_versions.registry
    watch = StoreWatch(registry.uri)
    assert watch.may_have_changed("twins")
    assert registry.alias_version("twins", "champion") == "1"
    assert not watch.may_have_changed("twins")  # a lookup writes nothing
    registry.promote("twins", reason="watch test")
    assert watch.may_have_changed("twins")
    assert registry.alias_version("twins", "champion") == "2"
