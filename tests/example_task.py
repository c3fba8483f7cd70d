"""The worked example of docs/add-a-task.md (docs/examples/blobs_plugin), for tests."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

import modelcycle.tasks.base as base

PLUGIN = Path(__file__).resolve().parents[1] / "docs" / "examples" / "blobs_plugin"
EXAMPLE = PLUGIN / "blobs_plugin" / "task.py"


def load_example(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import the example's task module into a copy of the task registry (undone after)."""
    base.available_tasks()  # built-in tasks first, so the copy holds them
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    monkeypatch.syspath_prepend(str(PLUGIN))  # saved models pickle its classes by name
    for name in [m for m in sys.modules if m.partition(".")[0] == "blobs_plugin"]:
        monkeypatch.delitem(sys.modules, name)  # imported afresh: it registers on import
    return importlib.import_module("blobs_plugin.task")


def config_entry_points(monkeypatch: pytest.MonkeyPatch, *packages: str) -> None:
    """Outside config packages, as `modelcycle.configs` entry points would name them."""
    import importlib.metadata

    import modelcycle.config as config

    found = [
        importlib.metadata.EntryPoint(f"p{i}", package, config.CONFIG_ENTRY_POINT_GROUP)
        for i, package in enumerate(packages)
    ]
    real = importlib.metadata.entry_points
    monkeypatch.setattr(
        importlib.metadata,
        "entry_points",
        lambda **kw: found if kw.get("group") == config.CONFIG_ENTRY_POINT_GROUP else real(**kw),
    )
    monkeypatch.setattr("modelcycle.logs._WARNED", set())


def publish_example(example: ModuleType, tmp_path: Path, versions: int = 1) -> Path:
    """A workspace holding blobs versions 1..`versions`: untrained models, pipeline-shaped runs.

    Returns:
        The workspace root.
    """
    from modelcycle.pipeline import run_tags
    from modelcycle.registry import Registry
    from modelcycle.tracking import Tracker, TrackingSettings

    task = example.BlobsTask(rows=60)
    data, summary = task.load()
    fold = task.final_fold(data, seed=0)
    tracker = Tracker(TrackingSettings(experiment="blobs"), tmp_path / "ws")
    for number in range(1, versions + 1):
        servable = task.servable(task.model(data, fold), data, fold)
        with tracker.run("blobs") as run_id:
            tracker.set_tags(run_tags(task, summary.data_hash))
            tracker.log_metrics({"model_auc_mean": 0.9, "baseline_auc_mean": 0.6})
            servable.save(tmp_path / f"model-{number}")
            tracker.log_directory(tmp_path / f"model-{number}", "model")
        Registry(tracker.uri).register(run_id, "blobs")
    return tmp_path / "ws"
