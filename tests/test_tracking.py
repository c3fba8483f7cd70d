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
