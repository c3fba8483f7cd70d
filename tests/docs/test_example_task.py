"""The worked example of docs/add-a-task.md, run for real: the generic pipeline trains it,
the registry gates and promotes it, export checks ONNX parity, and the server answers."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from fastapi.testclient import TestClient

import modelcycle.tasks.base as base
from example_task import EXAMPLE, load_example
from modelcycle.evaluate import evaluate_run, locate_run
from modelcycle.pipeline import PipelineSettings, release, run_pipeline
from modelcycle.registry import Registry
from modelcycle.serving.app import ServeSettings, create_app
from modelcycle.serving.loading import load_served
from modelcycle.tracking import Tracker, TrackingSettings
from modelcycle.training import TrainerSettings


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The example module, registered in a copy of the task registry."""
    return load_example(monkeypatch)


def test_the_example_is_about_a_hundred_lines() -> None:
    assert len(EXAMPLE.read_text().splitlines()) <= 130


def test_example_task_goes_through_the_whole_lifecycle(example: ModuleType, tmp_path: Path) -> None:
    assert base.get_task("blobs") is example.BlobsTask
    tracker = Tracker(TrackingSettings(experiment="blobs"), tmp_path)
    result = run_pipeline(
        example.BlobsTask(),
        PipelineSettings("blobs", n_folds=3, seed=1),
        TrainerSettings(max_epochs=15, min_epochs=1, patience=15, progress_bar=False),
        tracker,
        tmp_path,
        {"task": {"name": "blobs"}},
    )
    mean = result.report.aggregate()
    assert mean["model"]["auc"][0] > mean["baseline"]["auc"][0] + 0.05
    # evaluate: the fold checkpoints re-scored by a fresh task give the numbers train wrote
    found = locate_run(result.run_id, tracker.uri, "blobs")
    again = evaluate_run(example.BlobsTask(), found, 3, 1, tracker, tmp_path / "evaluated")
    assert [f.model for f in again.folds] == [f.model for f in result.report.folds]
    assert [f.baseline for f in again.folds] == [f.baseline for f in result.report.folds]

    registry = Registry(tracker.uri)
    outcome = release(registry, result.run_id, "blobs", tmp_path / "exports")
    assert outcome.version == "1", outcome.messages
    assert registry.resolve("blobs@champion").tags["export.parity.passed"] == "True"

    served = load_served(registry, "blobs@champion", tmp_path / "cache", threads=1)
    app = create_app(lambda: [served], ServeSettings(threads=1))
    with TestClient(app) as client:
        examples = client.get("/v1/models/blobs/examples").json()["examples"]
        assert len(examples) == 3
        answer = client.post("/v1/models/blobs/predict", json={"x": [2.0, 2.0, 0.0, 0.0]})
        assert answer.status_code == 200, answer.text
        assert answer.json()["version"] == "1" and answer.json()["outputs"]["logit"] > 0
        negative = client.post("/v1/models/blobs/predict", json={"x": [-2.0, -2.0, 0.0, 0.0]})
        assert negative.json()["outputs"]["logit"] < 0
        bad = client.post("/v1/models/blobs/predict", json={"x": [1.0]})
        assert bad.status_code == 422
