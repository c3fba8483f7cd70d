"""StoreWatch: a server skips its alias lookup while the SQLite registry is unchanged."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from modelcycle.registry import StoreWatch
from modelcycle.serving import server
from modelcycle.serving.loading import ModelLoadError, ServedModel, load_served
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


def test_a_failed_reload_is_tried_again_at_the_next_look(
    two_versions: ServedWorkspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The failed load had marked the store seen: no retry until the 60 s refresh, although
    # the reload metric says the next poll tries again.
    registry, cache = two_versions.registry, tmp_path / "cache"
    loads: list[str] = []

    def flaky(*args: Any, **kwargs: Any) -> ServedModel:
        loads.append(args[1])
        if len(loads) == 1:
            raise ModelLoadError("the file was being copied")
        return load_served(*args, **kwargs)

    monkeypatch.setattr(server, "load_served", flaky)
    reload = server.alias_reloader(registry, cache, threads=1, variant=None)
    current = load_served(registry, "twins@champion", cache, threads=1)
    assert current.version == "1" and reload(current) is None  # the alias stayed
    registry.promote("twins", reason="retry test")
    with pytest.raises(ModelLoadError, match="being copied"):
        reload(current)
    fresh = reload(current)  # nothing written since, and tried again all the same
    assert fresh is not None and fresh.version == "2" and loads == ["twins@champion"] * 2
    assert reload(fresh) is None
