"""Model embeddings for drift monitoring, as a few principal components inside the model.

A task's servable module may return an output named `EMBEDDING`: its representation of each
request row, (n, d). When the model is saved, `project_embeddings` fits a PCA on the
module's embeddings of the reference sample and replaces that output by its first components,
`EMBEDDING_PC` (n, k), computed inside the module, so the exported ONNX model returns them.
Serving keeps them out of responses and records them with each request's drift features as
`embedding_pc1` … `embedding_pck`, where drift monitoring tests them like any other column.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from modelcycle.servable import ServableModel

log = logging.getLogger(__name__)

EMBEDDING = "embedding"
EMBEDDING_PC = "embedding_pc"
BATCH = 256


class EmbeddingProjection(nn.Module):
    """Wraps a module: its embedding output becomes (embedding - mean) @ components.T."""

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
        """The wrapped module's outputs, its embedding replaced by the projection."""
        outputs = list(self.inner(*inputs))
        outputs[self.index] = (outputs[self.index] - self.mean) @ self.components.T
        return tuple(outputs)


def project_embeddings(servable: ServableModel, k: int = 3) -> ServableModel:
    """Replace the servable's `embedding` output by its first `k` principal components.

    The PCA is fitted on the module's embeddings of the reference sample (the held-out rows
    when there is none). A servable without an `embedding` output is returned unchanged.

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
    k = min(k, vt.shape[0])
    explained = (singular[:k] ** 2).sum() / max(float((singular**2).sum()), 1e-12)
    log.info(
        "Embedding drift: %d principal components of %d-d embeddings (%.0f%% of variance)",
        k,
        embeddings.shape[1],
        100 * explained,
    )
    names = list(servable.output_names)
    names[index] = EMBEDDING_PC
    servable.module = EmbeddingProjection(servable.module, index, mean, vt[:k])
    servable.output_names = names
    servable.monitor_outputs = [EMBEDDING_PC]
    return servable


def monitor_columns(
    outputs: Mapping[str, np.ndarray], monitored: Sequence[str]
) -> dict[str, float]:
    """One request's monitoring-only outputs as named numbers: `embedding_pc1`, … ."""
    columns: dict[str, float] = {}
    for name in monitored:
        values = np.asarray(outputs[name], dtype=float).reshape(-1)
        columns.update({f"{name}{i + 1}": float(v) for i, v in enumerate(values)})
    return columns


def is_embedding_column(column: str) -> bool:
    """Whether a drift column is a component of the model's embedding."""
    return column.startswith(EMBEDDING_PC)


def _embed(module: nn.Module, rows: Sequence[np.ndarray], index: int) -> np.ndarray:
    module.eval()
    parts = []
    with torch.no_grad():
        for lo in range(0, len(rows[0]), BATCH):
            outputs = module(*(torch.as_tensor(x[lo : lo + BATCH]) for x in rows))
            parts.append(outputs[index].float().numpy())
    return np.concatenate(parts).astype(np.float64)
