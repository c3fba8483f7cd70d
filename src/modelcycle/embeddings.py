"""Model embeddings for drift monitoring: a distance from the reference, inside the model.

A task's servable module may return an output named `EMBEDDING`: its representation of each
request row, (n, d). When the model is saved, `project_embeddings` fits a PCA on the module's
embeddings of the reference sample and replaces that output by `EMBEDDING_DISTANCE` (n,): the
squared Mahalanobis distance of each embedding from the reference mean in the first k
principal components, computed inside the module, so the exported ONNX model returns it.
Serving keeps it out of responses and records it with each request's drift features, where
drift monitoring tests it like any other column: embeddings that move away from (or
collapse towards) the reference change its distribution.

One distance column rather than one column per component: on real QTIM the components,
tested separately, raised false alarms from 4.2 % to 5.9 % of windows without catching any
shift more often (bench/drift_calibration.py); the distance kept them at 4.9 %.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from modelcycle.embedding_columns import EMBEDDING, EMBEDDING_DISTANCE

if TYPE_CHECKING:
    from modelcycle.servable import ServableModel

log = logging.getLogger(__name__)

BATCH = 256


class EmbeddingProjection(nn.Module):
    """Wraps a module: its embedding output becomes the squared distance sum(((e - mean) @ C.T)²).

    The rows of `components` are principal axes divided by their standard deviations, so the
    distance is Mahalanobis in that subspace (about k on average for reference rows).
    """

    mean: torch.Tensor
    components: torch.Tensor

    def __init__(
        self, module: nn.Module, index: int, mean: np.ndarray, components: np.ndarray
    ) -> None:
        super().__init__()
        self.inner, self.index = module, index
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("components", torch.as_tensor(components, dtype=torch.float32))

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The wrapped module's outputs, its embedding replaced by the distance (n,)."""
        outputs = list(self.inner(*inputs))
        whitened = (outputs[self.index] - self.mean) @ self.components.T
        outputs[self.index] = (whitened**2).sum(dim=1)
        return tuple(outputs)


def project_embeddings(servable: ServableModel, k: int = 3) -> ServableModel:
    """Replace the servable's `embedding` output by its distance from the reference mean.

    The PCA is fitted on the module's embeddings of the reference sample (the held-out rows
    when there is none); the distance uses its first `k` components, each scaled to unit
    variance. A servable without an `embedding` output is returned unchanged.

    Raises:
        ValueError: `k` below 1, or fewer than two reference rows to fit the PCA on.
    """
    if EMBEDDING not in servable.output_names:
        return servable
    if k < 1:
        raise ValueError(f"embedding components k must be at least 1, got {k}.")
    index = servable.output_names.index(EMBEDDING)
    rows = servable.reference if servable.reference is not None else servable.held_out
    embeddings = _embed(servable.module, rows, index)
    if len(embeddings) < 2:
        raise ValueError(
            f"{servable.task}: {len(embeddings)} reference rows; at least 2 are needed to fit "
            "the embedding PCA. Save the model with a larger reference sample."
        )
    mean = embeddings.mean(axis=0)
    _, singular, vt = np.linalg.svd(embeddings - mean, full_matrices=False)
    sd = singular / np.sqrt(len(embeddings) - 1)
    k = min(k, int((sd > 1e-8 * max(sd[0], 1e-30)).sum()) or 1)
    explained = (singular[:k] ** 2).sum() / max(float((singular**2).sum()), 1e-12)
    log.info(
        "Embedding drift: distance in %d principal components of %d-d embeddings "
        "(%.0f%% of their variance)",
        k,
        embeddings.shape[1],
        100 * explained,
    )
    components = vt[:k] / np.maximum(sd[:k, None], 1e-12)
    names = list(servable.output_names)
    names[index] = EMBEDDING_DISTANCE
    servable.module = EmbeddingProjection(servable.module, index, mean, components)
    servable.output_names = names
    servable.monitor_outputs = [EMBEDDING_DISTANCE]
    return servable


def _embed(module: nn.Module, rows: Sequence[np.ndarray], index: int) -> np.ndarray:
    module.eval()
    parts = []
    with torch.no_grad():
        for lo in range(0, len(rows[0]), BATCH):
            outputs = module(*(torch.as_tensor(x[lo : lo + BATCH]) for x in rows))
            parts.append(outputs[index].float().numpy())
    return np.concatenate(parts).astype(np.float64)
