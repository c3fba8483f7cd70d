"""The task contract, exercised with a tiny fake task that shares nothing with twins."""

from __future__ import annotations

import json
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader, TensorDataset

import modelcycle.tasks.base as base
import modelcycle.tasks.twins  # noqa: F401 - registered before the registry is copied
from modelcycle.pipeline import PipelineSettings, run_pipeline
from modelcycle.servable import ServableModel
from modelcycle.tasks import DataSummary, Evaluation, Fold, Task, get_task, register_task
from modelcycle.tracking import Tracker, TrackingSettings
from modelcycle.training import TrainerSettings

Blobs = tuple[np.ndarray, np.ndarray]


class Logistic(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)
        self.scores: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.binary_cross_entropy_with_logits(self(x), y)

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self.scores.append(self(batch[0]))
        self.labels.append(batch[1])

    def on_validation_epoch_end(self) -> None:
        y, s = torch.cat(self.labels).numpy(), torch.cat(self.scores).numpy()
        self.log("val_auc", float(roc_auc_score(y, s)))
        self.scores.clear()
        self.labels.clear()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.5)


class BlobTask(Task[Blobs]):
    """y = 1 when x0 + x1 > 0; the baseline looks at x0 alone."""

    primary_metric = "auc"
    summary_metrics = ("auc",)

    def load(self) -> tuple[Blobs, DataSummary]:
        X = np.random.default_rng(0).normal(size=(120, 4)).astype(np.float32)
        return (X, (X[:, 0] + X[:, 1] > 0).astype(np.float32)), DataSummary("h", {"rows": 120})

    def folds(self, data: Blobs, n_folds: int, seed: int) -> list[Fold]:
        parts = np.array_split(np.random.default_rng(seed).permutation(len(data[0])), n_folds)
        out = []
        for k, test in enumerate(parts):
            rest = np.setdiff1d(np.arange(len(data[0])), test)
            out.append(Fold(k, rest[:-20], rest[-20:], test))
        return out

    def datamodule(self, data: Blobs, fold: Fold, seed: int) -> L.LightningDataModule:
        def loader(rows: Any) -> DataLoader[Any]:
            return DataLoader(
                TensorDataset(torch.tensor(data[0][rows]), torch.tensor(data[1][rows])),
                batch_size=16,
            )

        return L.LightningDataModule.from_datasets(
            loader(fold.train).dataset, loader(fold.val).dataset, batch_size=16
        )

    def model(self, data: Blobs, fold: Fold) -> L.LightningModule:
        return Logistic()

    def baseline(self, data: Blobs, fold: Fold) -> Evaluation:
        return Evaluation({"auc": float(roc_auc_score(data[1][fold.test], data[0][fold.test, 0]))})

    def evaluate(self, module: L.LightningModule, data: Blobs, fold: Fold) -> Evaluation:
        with torch.no_grad():
            s = module(torch.tensor(data[0][fold.test])).numpy()
        return Evaluation({"auc": float(roc_auc_score(data[1][fold.test], s))})

    def final_fold(self, data: Blobs, seed: int) -> Fold:
        rows = np.random.default_rng(seed).permutation(len(data[0]))
        return Fold(-1, rows[20:], rows[:20], np.array([], dtype=int))

    def servable(self, module: L.LightningModule, data: Blobs, fold: Fold) -> ServableModel:
        return ServableModel("blobs", module, ["x"], ["logit"], [data[0][fold.val]])

    def plot(self, model: Evaluation, baseline: Evaluation, out_dir: Path, tag: str) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{tag}.txt"
        path.write_text(f"{model.metrics} {baseline.metrics}")
        return [path]


@pytest.fixture
def blob_registered(monkeypatch: pytest.MonkeyPatch) -> type[Task[Any]]:
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    return register_task("blobs")(BlobTask)


def test_lookup_by_name_and_unknown_lists_valid(blob_registered: type[Task[Any]]) -> None:
    assert get_task("blobs") is BlobTask and BlobTask.name == "blobs"
    assert get_task("twins").name == "twins"
    with pytest.raises(KeyError, match=r"Unknown task 'nope'. Registered tasks: blobs, .*twins"):
        get_task("nope")


def test_duplicate_names_are_errors(blob_registered: type[Task[Any]]) -> None:
    class Other(BlobTask):
        pass

    with pytest.raises(ValueError, match="'blobs' is already registered by BlobTask"):
        register_task("blobs")(Other)


def test_outside_packages_register_through_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    group = base.ENTRY_POINT_GROUP
    plugin = EntryPoint("blobs_plugin", f"{__name__}:BlobTask", group)
    broken = EntryPoint("broken", "no_such_module_xyz:Task", group)
    not_a_task = EntryPoint("not_a_task", f"{__name__}:Logistic", group)
    monkeypatch.setattr(base, "entry_points", lambda group: [plugin, broken, not_a_task])
    names = base.available_tasks()  # the broken plugins are logged, not fatal
    assert "blobs_plugin" in names and "twins" in names
    assert "broken" not in names and "not_a_task" not in names
    assert get_task("blobs_plugin") is BlobTask


def test_generic_pipeline_runs_a_task_it_has_never_seen(
    blob_registered: type[Task[Any]], tmp_path: Path
) -> None:
    tracker = Tracker(TrackingSettings(experiment="blobs"), tmp_path)
    result = run_pipeline(
        BlobTask(),
        PipelineSettings("blobs-run", n_folds=3, seed=1),
        TrainerSettings(max_epochs=15, min_epochs=1, patience=15, progress_bar=False),
        tracker,
        tmp_path,
        {"task": {"name": "blobs"}},
    )
    folds = result.report.folds
    assert [f.fold for f in folds] == [0, 1, 2]
    # the learned model sees both informative features; the baseline only one
    mean = result.report.aggregate()
    assert mean["model"]["auc"][0] > mean["baseline"]["auc"][0]
    summary = json.loads((result.report_dir / "summary.json").read_text())
    assert summary["task"] == "blobs" and summary["aggregate"]["model"]["auc"][0] > 0.9
    served = ServableModel.load(result.report_dir / "model")  # the final, deployable fit
    assert served.task == "blobs" and served.held_out[0].shape == (20, 4)
    assert sorted(p.name for p in result.report_dir.glob("fold*.txt")) == [
        "fold0.txt",
        "fold1.txt",
        "fold2.txt",
    ]
