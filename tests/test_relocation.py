"""A workspace moved to another folder: `modelcycle relocate` rewrites its stored paths."""

from __future__ import annotations

import logging
import shutil
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelcycle.cli import app
from modelcycle.registry import Registry, RegistryError
from modelcycle.relocation import _rewrite, relocate
from modelcycle.serving.loading import load_served
from modelcycle.tracking import Tracker, TrackingSettings
from serving_fixtures import publish

runner = CliRunner()


def _said(result: object) -> str:
    return " ".join(result.output.split())  # type: ignore[attr-defined]


@pytest.fixture
def moved(tmp_path: Path) -> tuple[Path, Path]:
    """A workspace with twins@champion, made in `old` and moved to `new`: (old, new)."""
    old, new = tmp_path / "made here" / "ws", tmp_path / "moved" / "ws"  # a space: quoted URIs
    tracker = Tracker(TrackingSettings(), old)
    publish(tmp_path, tracker, 0.95, seed=0)
    Registry(tracker.uri).promote("twins")
    new.parent.mkdir()
    shutil.move(old, new)
    return old.resolve(), new.resolve()


def test_a_moved_workspace_serves_again_once_relocated(
    moved: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old, new = moved
    registry = Registry(f"sqlite:///{new / 'mlflow.db'}")
    with pytest.raises(RegistryError, match="modelcycle relocate") as refused:
        load_served(registry, "twins@champion", tmp_path / "cache-1", threads=1)
    assert f"This workspace was made in {old}" in str(refused.value)

    result = runner.invoke(app, ["relocate", f"workspace={new}"], terminal_width=300)
    assert result.exit_code == 0, result.output
    assert f"stored paths from {old} to {new}" in _said(result)
    backup = next(new.glob("mlflow.db.before-relocate-*"))
    assert f"the store as it was: {backup}" in _said(result)

    served = load_served(registry, "twins@champion", tmp_path / "cache-2", threads=1)
    assert served.version == "1"
    with caplog.at_level(logging.WARNING, logger="modelcycle.tracking"):
        tracker = Tracker(TrackingSettings(), new)  # no "outside this workspace" warning now
        with tracker.run("after") as run_id:
            files = tmp_path / "files"
            files.mkdir()
            (files / "note.txt").write_text("hi")
            tracker.log_directory(files, "files")
    assert "outside this workspace" not in caplog.text
    assert list((new / "artifacts").rglob("note.txt")), "a new run's files go to the new place"
    with sqlite3.connect(new / "mlflow.db") as db, sqlite3.connect(backup) as before:
        tags = dict(db.execute("SELECT key, value FROM model_version_tags").fetchall())
        kept = before.execute("SELECT artifact_uri FROM runs").fetchone()[0]
    assert tags["lineage.reference_sample"].startswith(new.as_uri() + "/artifacts/")
    assert kept.startswith(old.as_uri())  # the backup is the store as it was
    assert run_id

    again = runner.invoke(app, ["relocate", f"workspace={new}"], terminal_width=300)
    assert again.exit_code == 0 and "nothing rewritten" in _said(again)


def test_two_relocations_in_one_second_keep_both_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "mlflow.db"
    with sqlite3.connect(store) as db:
        db.execute("CREATE TABLE experiments (artifact_location)")
        db.execute("INSERT INTO experiments VALUES (?)", ("/a/ws/artifacts",))
    monkeypatch.setattr("time.strftime", lambda *args: "20260101-120000")
    first = relocate(store)
    with sqlite3.connect(store) as db:  # made elsewhere again
        db.execute("UPDATE experiments SET artifact_location = '/b/ws/artifacts'")
    second = relocate(store)
    assert (first.old, second.old) == (Path("/a/ws"), Path("/b/ws"))
    assert first.backup is not None and second.backup == first.backup.with_name(
        first.backup.name + "-2"
    )
    with sqlite3.connect(first.backup) as db:  # the first copy was not overwritten
        assert db.execute("SELECT * FROM experiments").fetchone() == ("/a/ws/artifacts",)


def test_relocate_refuses_what_it_cannot_rewrite(tmp_path: Path) -> None:
    server = runner.invoke(
        app, ["relocate", f"workspace={tmp_path}", "logger.uri=http://127.0.0.1:5000"]
    )
    assert server.exit_code == 2 and "logger.uri=http://127.0.0.1:5000" in _said(server)
    empty = runner.invoke(app, ["relocate", f"workspace={tmp_path / 'none'}"], terminal_width=300)
    assert empty.exit_code == 2 and "no tracking store" in _said(empty)
    assert "Traceback" not in server.output + empty.output


def test_only_whole_folder_names_are_rewritten() -> None:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (value)")
    values = [
        "/x/ws",
        "/x/ws/reports/run-1",
        "file:///x/ws/artifacts/abc",
        '{"config": "/x/ws/c.yaml", "other": "/x/ws2/c.yaml"}',
        "/x/ws2/artifacts",
        "/y/x/ws/artifacts",
        "/x/ws.bak,/x/ws",
        7,
    ]
    db.executemany("INSERT INTO t VALUES (?)", [(v,) for v in values])
    assert _rewrite(db, "t", Path("/x/ws"), Path("/new place")) == 5
    assert [row[0] for row in db.execute("SELECT value FROM t")] == [
        "/new place",
        "/new place/reports/run-1",
        "file:///new%20place/artifacts/abc",
        '{"config": "/new place/c.yaml", "other": "/x/ws2/c.yaml"}',
        "/x/ws2/artifacts",
        "/y/x/ws/artifacts",
        "/x/ws.bak,/new place",
        7,
    ]
