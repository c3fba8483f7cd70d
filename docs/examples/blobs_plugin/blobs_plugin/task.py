"""A complete task: points in 4-D, is x0 + x1 > 0? (docs: "Add a task"). Adapter: `serving`."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import TensorDataset

from blobs_plugin.serving import BlobsServing
from modelcycle.models.inference import evaluating
from modelcycle.servable import ServableModel
from modelcycle.tasks import DataSummary, Evaluation, Fold, Task, register_task
from modelcycle.tasks.base import check_settings

Blobs = tuple[np.ndarray, np.ndarray]  # features (n, 4) float32, labels (n,) 0/1


class Logistic(L.LightningModule):
    """One linear layer; logs `val_auc`, the metric early stopping watches."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr = lr
        self.linear = torch.nn.Linear(4, 1)
        self.outputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(1)  # (batch,) logits

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(self(batch[0]), batch[1])

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self.outputs.append((self(batch[0]), batch[1]))

    def on_validation_epoch_end(self) -> None:
        scores, labels = (torch.cat(t).numpy() for t in zip(*self.outputs, strict=True))
        self.log("val_auc", float(roc_auc_score(labels, scores)))
        self.outputs.clear()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


@register_task("blobs")
class BlobsTask(Task[Blobs]):
    """The learned model sees every feature; the baseline scores x0 alone."""

    primary_metric = "auc"
    summary_metrics = ("auc",)
    serving = BlobsServing

    def __init__(self, rows: int = 240, lr: float = 0.5) -> None:  # conf/task/blobs.yaml
        check_settings(positive={"lr": lr}, whole={"rows": rows})  # ValueError naming the key
        self.rows, self.lr = rows, lr

    def load(self) -> tuple[Blobs, DataSummary]:
        X = np.random.default_rng(0).normal(size=(self.rows, 4)).astype(np.float32)
        y = (X[:, 0] + X[:, 1] > 0).astype(np.float32)
        notes = [f"positives: {y.mean():.0%}"]  # logged by `train`, printed by `data stats`
        return (X, y), DataSummary(f"blobs-{self.rows}", {"rows": self.rows}, notes)

    def folds(self, data: Blobs, n_folds: int, seed: int) -> list[Fold]:
        rows = np.random.default_rng(seed).permutation(len(data[0]))
        folds = []
        for k, test in enumerate(np.array_split(rows, n_folds)):
            rest = np.setdiff1d(rows, test)
            folds.append(Fold(k, rest[20:], rest[:20], test))
        return folds

    def datamodule(self, data: Blobs, fold: Fold, seed: int) -> L.LightningDataModule:
        def part(rows: np.ndarray) -> TensorDataset:
            return TensorDataset(torch.tensor(data[0][rows]), torch.tensor(data[1][rows]))

        return L.LightningDataModule.from_datasets(part(fold.train), part(fold.val), batch_size=16)

    def model(self, data: Blobs, fold: Fold) -> L.LightningModule:
        return Logistic(self.lr)

    def baseline(self, data: Blobs, fold: Fold) -> Evaluation:
        return Evaluation({"auc": float(roc_auc_score(data[1][fold.test], data[0][fold.test, 0]))})

    def evaluate(self, module: L.LightningModule, data: Blobs, fold: Fold) -> Evaluation:
        with evaluating(module):  # eval mode, no gradients; training mode put back after
            scores = module(torch.tensor(data[0][fold.test])).numpy()
        return Evaluation({"auc": float(roc_auc_score(data[1][fold.test], scores))})

    def final_fold(self, data: Blobs, seed: int) -> Fold:
        rows = np.random.default_rng(seed).permutation(len(data[0]))
        return Fold(-1, rows[20:], rows[:20], np.array([], dtype=int))

    def servable(self, module: L.LightningModule, data: Blobs, fold: Fold) -> ServableModel:
        X, y = data
        return ServableModel("blobs", module, ["x"], ["logit"], [X[fold.val]], target=y[fold.val])

    def plot(self, model: Evaluation, baseline: Evaluation, out_dir: Path, tag: str) -> list[Path]:
        return []  # a real task saves its curves here
