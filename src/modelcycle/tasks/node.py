"""Node classification: Wiki-CS articles, a graph network on each article's ego graph.

Data: `WikiCSSource` (`modelcycle.data.wikics`). Model: PyG's dense GCN, GraphSAGE or GAT
convolutions over each node's ego graph (the node, up to `task.max_links` linked nodes and
the links among them; `modelcycle.data.ego_graphs`), so training, scoring and serving see a
node the same way and a served request carries its own context. Baseline: label propagation
over the whole graph from the training nodes' labels (no learning); the majority class's
share is reported beside it.

Folds are Wiki-CS's official splits: fold k trains on split k's training nodes, stops early
on its stopping nodes and is tested on the one test half every split shares, so the spread
over folds measures the training split, not the test sample.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import TensorDataset

from modelcycle.data.ego_graphs import ego_graphs
from modelcycle.data.tables import DataError
from modelcycle.data.wikics import GraphSet, WikiCSSource
from modelcycle.embedding_columns import EMBEDDING
from modelcycle.evaluation.classification import score_classifier
from modelcycle.evaluation.classification_plots import plot_classification
from modelcycle.models.ego_gnn import EgoClassifier, EgoGNN, NodeClassifier
from modelcycle.models.inference import evaluating
from modelcycle.servable import ServableModel
from modelcycle.tasks.base import (
    DataSummary,
    Evaluation,
    Fold,
    Task,
    check_settings,
    register_task,
    unseen_first,
)
from modelcycle.tasks.image import TensorData
from modelcycle.tasks.node_serving import NodeServing

log = logging.getLogger(__name__)

FINAL = -1
#: Ego graphs built and scored at a time (memory: rows × (K+1) × d floats).
CHUNK = 512


@register_task("node")
class NodeTask(Task[GraphSet]):
    """An ego-graph network beside label propagation, on the dataset's official splits.

    Args:
        source: Where the graph comes from.
        encoder: Builds the network from `in_dim` and `num_classes` (the model config).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        batch_size: Ego graphs per batch.
        max_links: Linked nodes an ego graph holds; a node with more keeps a seeded draw.
        propagation_layers: Steps of the label-propagation baseline.
        propagation_alpha: Share of a node's label mass that comes from its neighbours there.
        held_out_rows: Stopping nodes saved with the deployable model (export, examples).
        reference_rows: Training nodes saved as its drift reference sample (seeded draw).
        top_k: Classes a served prediction lists.
    """

    serving = NodeServing
    data_sources = (WikiCSSource,)
    model_targets = (EgoGNN,)
    primary_metric = "macro_f1"
    unit = "nodes"
    monitor = "val_accuracy"
    summary_metrics = ("accuracy", "macro_f1", "min_class_recall", "ece")

    def __init__(
        self,
        source: WikiCSSource,
        encoder: Callable[..., EgoGNN],
        lr: float = 0.005,
        weight_decay: float = 5e-4,
        batch_size: int = 64,
        max_links: int = 32,
        propagation_layers: int = 10,
        propagation_alpha: float = 0.9,
        held_out_rows: int = 48,
        reference_rows: int = 400,
        top_k: int = 3,
    ) -> None:
        check_settings(
            positive={"lr": lr},
            whole={
                "batch_size": batch_size,
                "max_links": max_links,
                "propagation_layers": propagation_layers,
                "top_k": top_k,
                "held_out_rows": held_out_rows,
            },
            shares={"propagation_alpha": propagation_alpha},
            non_negative={
                "weight_decay": weight_decay,
                "reference_rows": reference_rows,
            },
        )
        self.source, self.encoder = source, encoder
        self.lr, self.weight_decay, self.batch_size = lr, weight_decay, batch_size
        self.max_links = max_links
        self.propagation_layers, self.propagation_alpha = propagation_layers, propagation_alpha
        self.held_out_rows, self.reference_rows, self.top_k = held_out_rows, reference_rows, top_k

    def load(self) -> tuple[GraphSet, DataSummary]:
        """Read the graph; count nodes, links, classes and splits."""
        data = self.source.load()
        degrees = np.array([len(n) for n in data.neighbors])
        counts = {
            "nodes": len(data),
            "links": int(degrees.sum()) // 2,
            "classes": len(data.classes),
            "splits": len(data.train_masks),
            "test_nodes": int(data.test_mask.sum()),
        }
        capped = int((degrees > self.max_links).sum())
        notes = list(data.notes)
        if capped:
            notes.append(
                f"{capped} nodes have more than task.max_links={self.max_links} links: their "
                "ego graphs hold a seeded draw of them"
            )
        return data, DataSummary(data.data_hash, counts, notes)

    def folds(self, data: GraphSet, n_folds: int, seed: int) -> list[Fold]:
        """The first `n_folds` official splits: their training and stopping nodes, the test half."""
        if n_folds > len(data.train_masks):
            raise DataError(
                f"cv.n_folds={n_folds}: {self.source.dataset} has {len(data.train_masks)} "
                "official splits; give at most that many."
            )
        test = np.flatnonzero(data.test_mask)
        return [
            Fold(
                k, np.flatnonzero(data.train_masks[k]), np.flatnonzero(data.stopping_masks[k]), test
            )
            for k in range(n_folds)
        ]

    def final_fold(self, data: GraphSet, seed: int) -> Fold:
        """Every labelled node trains but split 0's stopping nodes, which stop the training."""
        val = np.flatnonzero(data.stopping_masks[0])
        train = np.setdiff1d(np.arange(len(data)), val)
        return Fold(FINAL, train, val, np.array([], dtype=int))

    def _ego(self, data: GraphSet, rows: np.ndarray) -> tuple[np.ndarray, ...]:
        return ego_graphs(data.features, data.neighbors, rows, self.max_links)

    def _dataset(self, data: GraphSet, rows: np.ndarray) -> TensorDataset:
        x, adj, mask = self._ego(data, rows)
        labels = torch.from_numpy(data.labels[rows].astype(np.int64))
        return TensorDataset(
            torch.from_numpy(x), torch.from_numpy(adj), torch.from_numpy(mask), labels
        )

    def datamodule(self, data: GraphSet, fold: Fold, seed: int) -> L.LightningDataModule:
        """Ego graphs and classes of the fold's training and stopping nodes."""
        return TensorData(
            self._dataset(data, fold.train), self._dataset(data, fold.val), self.batch_size, 0
        )

    def model(self, data: GraphSet, fold: Fold) -> L.LightningModule:
        """A fresh network for the data's feature width and classes."""
        network = self.encoder(in_dim=data.features.shape[1], num_classes=len(data.classes))
        return NodeClassifier(network, self.lr, self.weight_decay)

    def baseline(self, data: GraphSet, fold: Fold) -> Evaluation:
        """Label propagation from `fold.train`'s labels over the whole graph, on `fold.test`."""
        probabilities = label_propagation(
            data, fold.train, self.propagation_layers, self.propagation_alpha
        )
        return score_classifier(probabilities[fold.test], data.labels[fold.test], data.classes)

    def evaluate(self, module: L.LightningModule, data: GraphSet, fold: Fold) -> Evaluation:
        """Softmax of the model on the test nodes' ego graphs."""
        probabilities = self.predict(module, data, fold.test)
        return score_classifier(probabilities, data.labels[fold.test], data.classes)

    def predict(self, module: L.LightningModule, data: GraphSet, rows: np.ndarray) -> np.ndarray:
        """(len(rows), classes) probabilities, ego graphs built and scored in chunks."""
        out = []
        with evaluating(module):
            for start in range(0, len(rows), CHUNK):
                x, adj, mask = (
                    torch.from_numpy(a) for a in self._ego(data, rows[start : start + CHUNK])
                )
                out.append(torch.softmax(module(x, adj, mask), dim=1).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(data.classes)), np.float32)

    def servable(self, module: L.LightningModule, data: GraphSet, fold: Fold) -> ServableModel:
        """Ego-graph arrays in; confidence, probabilities and embedding out."""
        assert isinstance(module, NodeClassifier)
        rows = np.sort(np.random.default_rng(0).permutation(fold.val)[: self.held_out_rows])
        reference, unseen = unseen_first(fold, rows, self.reference_rows)
        return ServableModel(
            task=self.name,
            module=EgoClassifier(module),
            input_names=["features", "links", "mask"],
            output_names=["confidence", "probabilities", EMBEDDING],
            held_out=list(self._ego(data, rows)),
            reference=list(self._ego(data, reference)),
            reference_unseen=unseen,
            info={
                "dataset": self.source.dataset,
                "classes": data.classes,
                "feature_dim": int(data.features.shape[1]),
                # for the server's plausibility check: the training articles' spread
                "feature_mean": data.features[fold.train].mean(axis=0).tolist(),
                "feature_sd": data.features[fold.train].std(axis=0).tolist(),
                "max_links": self.max_links,
                "top_k": min(self.top_k, len(data.classes)),
                "held_out_labels": [data.classes[i] for i in data.labels[rows]],
            },
        )

    @property
    def model_name(self) -> str:
        """One registered model per dataset (node_wikics)."""
        return f"{self.name}_{self.source.dataset}"

    def reference(self, data: GraphSet) -> dict[str, float]:
        """The majority class's share of all nodes: what always guessing it would score."""
        return {"majority_class_share": float(np.bincount(data.labels).max() / len(data))}

    def plot(self, model: Evaluation, baseline: Evaluation, out_dir: Path, tag: str) -> list[Path]:
        """Confusion matrices, recall per class and reliability diagrams, model beside baseline."""
        return plot_classification({"model": model, "baseline": baseline}, out_dir, tag)


def label_propagation(data: GraphSet, train: np.ndarray, layers: int, alpha: float) -> np.ndarray:
    """(n, classes) class scores spread from the training nodes' labels over the graph.

    PyG's `LabelPropagation` (Zhou et al., 2004): `layers` steps of Y ← alpha·D^-½AD^-½·Y +
    (1-alpha)·Y0, rows scaled to sum to 1 (a node the labels never reach gets a uniform row).
    """
    from torch_geometric.nn import LabelPropagation

    sources = np.concatenate([np.full(len(n), i) for i, n in enumerate(data.neighbors)])
    targets = np.concatenate(data.neighbors) if data.neighbors else np.zeros(0, int)
    edge_index = torch.from_numpy(np.stack([sources, targets]).astype(np.int64))
    mask = torch.zeros(len(data), dtype=torch.bool)
    mask[torch.from_numpy(train)] = True
    labels = torch.from_numpy(data.labels.astype(np.int64))
    scores = LabelPropagation(layers, alpha)(labels, edge_index, mask=mask).numpy()
    totals = scores.sum(axis=1, keepdims=True)
    uniform = np.full_like(scores, 1 / scores.shape[1])
    return np.where(totals > 0, scores / np.where(totals > 0, totals, 1), uniform)
