"""A registered, exported twins model in a throwaway workspace, for serving tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jsonschema
import pytest

from modelcycle.data.qtim import QTIMSource
from modelcycle.export import export_version
from modelcycle.models.encoders import MLPEncoder
from modelcycle.pipeline import run_tags
from modelcycle.registry import Registry
from modelcycle.serving.loading import ServedModel, load_served
from modelcycle.tasks.twins import TwinsTask
from modelcycle.tracking import Tracker, TrackingSettings
from qtim_fixtures import write_tiny_qtim


class Getter(Protocol):
    """An HTTP client of a server: httpx's, or a TestClient."""

    def get(self, url: str) -> Any: ...


def documented_answer(client: Getter) -> jsonschema.Draft202012Validator:
    """A validator of predict's 200 answer, as the server's OpenAPI document gives it."""
    document = client.get("/openapi.json").json()
    operation = document["paths"]["/v1/models/{name}/predict"]["post"]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@dataclass(frozen=True)
class ServedWorkspace:
    """Where the model lives: the workspace root and its registry."""

    root: Path
    registry: Registry


def publish(tmp: Path, tracker: Tracker, cv_metric: float, seed: int) -> str:
    """Log a pipeline-shaped run holding an untrained twins model (it starts at the
    correlation baseline) whose CV metric is `cv_metric`; register and export it.

    Returns:
        The new version.
    """
    task = TwinsTask(QTIMSource(root=write_tiny_qtim(tmp / "qtim")), encoder=MLPEncoder)
    data, summary = task.load()
    fold = task.final_fold(data, seed=seed)
    servable = task.servable(task.model(data, fold), data, fold)
    with tracker.run("twins") as run_id:
        metric = task.primary_metric
        tracker.set_tags(run_tags(task, summary.data_hash))
        tracker.log_metrics({f"model_{metric}_mean": cv_metric, f"baseline_{metric}_mean": 0.9})
        servable.save(tmp / f"model-{run_id}")
        tracker.log_directory(tmp / f"model-{run_id}", "model")
    registry = Registry(tracker.uri)
    version, _ = registry.register(run_id, "twins")
    export_version(registry, f"twins/{version.version}", tmp / "ws" / "exports")
    return version.version


@pytest.fixture(scope="session")
def served_workspace(tmp_path_factory: pytest.TempPathFactory) -> ServedWorkspace:
    """twins@champion, version 1, registered from a pipeline-shaped run and exported."""
    tmp = tmp_path_factory.mktemp("served")
    tracker = Tracker(TrackingSettings(), tmp / "ws")
    publish(tmp, tracker, 0.95, seed=0)
    registry = Registry(tracker.uri)
    registry.promote("twins")
    return ServedWorkspace(tmp / "ws", registry)


@pytest.fixture
def two_versions(tmp_path: Path) -> ServedWorkspace:
    """twins@champion = version 1 and twins@challenger = version 2, both exported."""
    tracker = Tracker(TrackingSettings(), tmp_path / "ws")
    publish(tmp_path, tracker, 0.95, seed=0)
    registry = Registry(tracker.uri)
    registry.promote("twins")
    publish(tmp_path, tracker, 0.96, seed=1)
    return ServedWorkspace(tmp_path / "ws", registry)


@pytest.fixture(scope="module")
def served(
    served_workspace: ServedWorkspace, tmp_path_factory: pytest.TempPathFactory
) -> ServedModel:
    """twins@champion loaded for serving (hash-checked ONNX, one thread)."""
    cache = tmp_path_factory.mktemp("cache")
    return load_served(served_workspace.registry, "twins@champion", cache, threads=1)
