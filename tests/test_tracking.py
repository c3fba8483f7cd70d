"""Tracked runs end as what happened to them: finished, failed, or stopped by the user."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from modelcycle.tracking import Tracker, TrackingSettings


def test_an_interrupted_run_ends_killed_and_a_failed_one_failed(tmp_path: Path) -> None:
    tracker = Tracker(TrackingSettings(), tmp_path / "ws")
    client = MlflowClient(tracking_uri=tracker.uri)
    ids: dict[str, str] = {}
    with (
        pytest.raises(KeyboardInterrupt),
        tracker.run("parent") as ids["parent"],
        tracker.run("child", nested=True) as ids["child"],
    ):
        raise KeyboardInterrupt
    with pytest.raises(ValueError), tracker.run("broken") as ids["broken"]:
        raise ValueError("a bug")
    with tracker.run("done") as ids["done"]:
        pass
    # a finished run reopened to log more (the pipeline's export)
    with pytest.raises(KeyboardInterrupt), tracker.resume(ids["done"]):
        raise KeyboardInterrupt
    status = {name: client.get_run(run_id).info.status for name, run_id in ids.items()}
    assert status == {"parent": "KILLED", "child": "KILLED", "broken": "FAILED", "done": "KILLED"}


def test_an_interruption_stays_one_when_the_store_cannot_take_the_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Seen in CI: a Ctrl-C inside MLflow's own SQLite write left the store locked, and the
    # "database is locked" error of marking the run replaced the interruption (exit 1). A
    # Ctrl-C now waits for the write; another process may still hold the lock too long.
    import mlflow
    from mlflow.exceptions import MlflowException

    tracker = Tracker(TrackingSettings(), tmp_path / "ws")
    real_end_run = mlflow.end_run

    def locked(status: str = "FINISHED") -> None:
        if status == "KILLED":
            mlflow.tracking.fluent._active_run_stack.get().pop()  # as end_run does first
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        real_end_run(status)

    monkeypatch.setattr(mlflow, "end_run", locked)
    with pytest.raises(KeyboardInterrupt), tracker.run("locked") as run_id:
        raise KeyboardInterrupt
    assert f"Run {run_id} could not be marked KILLED (" in caplog.text
    assert "database is locked" in caplog.text
    assert mlflow.active_run() is None  # nothing left open for the next run
