"""A registered, exported twins model in a throwaway workspace, for serving tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelcycle.data.qtim import QTIMSource
from modelcycle.export import export_version
from modelcycle.models.encoders import MLPEncoder
from modelcycle.registry import Registry
from modelcycle.tasks.twins import TwinsTask
from modelcycle.tracking import Tracker, TrackingSettings
from qtim_fixtures import write_tiny_qtim


@dataclass(frozen=True)
class ServedWorkspace:
    """Where the model lives: the workspace root and its registry."""

    root: Path
    registry: Registry


@pytest.fixture(scope="session")
def served_workspace(tmp_path_factory: pytest.TempPathFactory) -> ServedWorkspace:
    """twins@champion, version 1: an untrained siamese model (it starts at the correlation
    baseline), registered from a run shaped like a pipeline's and exported to ONNX."""
    tmp = tmp_path_factory.mktemp("served")
    task = TwinsTask(QTIMSource(root=write_tiny_qtim(tmp / "qtim")), encoder=MLPEncoder)
    data, summary = task.load()
    fold = task.final_fold(data, seed=0)
    servable = task.servable(task.model(data, fold), data, fold)
    tracker = Tracker(TrackingSettings(), tmp / "ws")
    with tracker.run("twins") as run_id:
        metric = task.primary_metric
        tracker.set_tags(
            {
                "task": "twins",
                "primary_metric": metric,
                "data_hash": summary.data_hash,
                "packages": json.dumps({}),
                "git_sha": "test",
                "git_dirty": "False",
            }
        )
        tracker.log_metrics({f"model_{metric}_mean": 0.95, f"baseline_{metric}_mean": 0.90})
        servable.save(tmp / "model")
        tracker.log_directory(tmp / "model", "model")
    registry = Registry(tracker.uri)
    registry.register(run_id, "twins")
    registry.promote("twins")
    export_version(registry, "twins@champion", tmp / "ws" / "exports")
    return ServedWorkspace(tmp / "ws", registry)
