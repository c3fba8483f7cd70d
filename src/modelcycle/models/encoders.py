"""Encoders that map a flat feature vector (batch, n_features) to an embedding (batch, dim)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from modelcycle.data.freesurfer import N_SLOTS, RegionLayout
from modelcycle.kinds import Range


@dataclass(frozen=True)
class FeatureSpace:
    """What an encoder may know of its inputs: names, and processed training rows."""

    names: list[str]
    train: np.ndarray  # (n_train, n_features), already processed
    # How processed rows map back to raw values, raw = row * scale + offset, for encoders
    # that read the raw measures (a connectome's correlations); None: rows are raw already.
    offset: np.ndarray | None = None
    scale: np.ndarray | None = None

    @property
    def n_features(self) -> int:
        """Width of the flat input vector."""
        return len(self.names)


class CorrelationSkip(nn.Module):
    """Each row centred over its features, times learned per-feature weights (init 1).

    The cosine similarity of two such rows with unit weights is their Pearson correlation,
    i.e. the baseline; an encoder that adds a zero-initialized correction to this starts
    exactly at the baseline and learns from there.
    """

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, n_features) → (batch, n_features)."""
        return (x - x.mean(dim=1, keepdim=True)) * self.weight


class MLPEncoder(nn.Module):
    """An MLP over the whole measure vector, optionally residual on the correlation skip.

    Args:
        space: The input features.
        hidden: Widths of the hidden layers.
        dim: Embedding width (with `residual`, the embedding is as wide as the input).
        dropout: Dropout on the input and after each hidden layer.
        activation: GELU between layers; without it the MLP is a low-rank linear map.
        residual: Add the MLP's output (last layer zero-initialized) to `CorrelationSkip`.
    """

    #: Checked when the config is assembled, before the data is read.
    RANGES: ClassVar[dict[str, Range]] = {"hidden": (1, None), "dim": (1, None), "dropout": (0, 1)}

    def __init__(
        self,
        space: FeatureSpace,
        hidden: tuple[int, ...] = (32,),
        dim: int = 64,
        dropout: float = 0.0,
        activation: bool = False,
        residual: bool = True,
    ) -> None:
        super().__init__()
        out = space.n_features if residual else dim
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        width = space.n_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.GELU() if activation else nn.Identity()]
            layers.append(nn.Dropout(dropout))
            width = h
        last = nn.Linear(width, out)
        if residual:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)
        self.skip = CorrelationSkip(space.n_features) if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, n_features) → (batch, dim), or (batch, n_features) when residual."""
        out = self.net(x)
        return out if self.skip is None else self.skip(x) + out


_EDGE_BUILDERS = {
    "covariance": lambda layout, train, k: layout.covariance_adjacency(train, k),
    "lobe": lambda layout, train, k: layout.lobe_adjacency(),
}


class RegionGraphEncoder(nn.Module):
    """A dense graph network over FreeSurfer regions, with global measures beside it.

    Nodes are brain regions carrying their measures (surface area, thickness, volume) and a
    learned identity; edges are fixed: structural covariance over the training rows (top-k
    |r| per node) or anatomical lobe adjacency. With `residual`, the graph's readout is a
    zero-initialized correction added to `CorrelationSkip`. Dense adjacency keeps the node
    count fixed, so the module exports to ONNX as plain matrix products.
    """

    select: torch.Tensor  # (n_features, nodes * slots) one-hot: which column fills each slot
    present: torch.Tensor  # (nodes, slots) 1 where the node has that measure
    select_global: torch.Tensor  # (n_features, n_global) one-hot of the non-regional columns
    A_hat: torch.Tensor  # (nodes, nodes) normalized adjacency with self-loops

    #: Checked when the config is assembled, before the data is read.
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"edges": tuple(_EDGE_BUILDERS)}
    #: Checked when the config is assembled, before the data is read.
    RANGES: ClassVar[dict[str, Range]] = {
        "hidden": (1, None),
        "layers": (1, None),
        "dim": (1, None),
        "top_k": (1, None),
        "dropout": (0, 1),
    }

    def __init__(
        self,
        space: FeatureSpace,
        hidden: int = 32,
        layers: int = 2,
        dim: int = 64,
        edges: str = "covariance",
        top_k: int = 8,
        dropout: float = 0.2,
        residual: bool = True,
    ) -> None:
        super().__init__()
        layout = RegionLayout.from_names(space.names)
        adjacency = _adjacency(layout, space.train, edges, top_k)
        n_nodes = len(layout.nodes)
        # Gathers as products with fixed one-hot matrices: deterministic backward without
        # the slow sorted scatter of indexing, and plain MatMul in ONNX.
        self.register_buffer("select", _one_hot(layout.index.reshape(-1), space.n_features))
        self.register_buffer("present", torch.as_tensor(layout.index >= 0, dtype=torch.float32))
        self.register_buffer("select_global", _one_hot(layout.global_index, space.n_features))
        self.register_buffer("A_hat", torch.as_tensor(_normalize(adjacency)))
        self.identity = nn.Parameter(torch.randn(n_nodes, 8) * 0.1)
        widths = [N_SLOTS * 2 + 8] + [hidden] * layers
        self.convs = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))
        self.dropout = nn.Dropout(dropout)
        n_global = len(layout.global_index)
        self.global_net = nn.Linear(n_global, hidden) if n_global else None
        readout = 2 * hidden + (hidden if n_global else 0)
        self.head = nn.Linear(readout, space.n_features if residual else dim)
        self.skip = CorrelationSkip(space.n_features) if residual else None
        if residual:  # start exactly at the correlation baseline
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, n_features) → (batch, dim)."""
        batch = x.shape[0]
        values = (x @ self.select).view(batch, *self.present.shape)  # (batch, nodes, slots)
        present = self.present.expand(batch, -1, -1)
        ident = self.identity.expand(batch, -1, -1)
        h = torch.cat([values, present, ident], dim=2)  # (batch, nodes, 2*slots + 8)
        for conv in self.convs:
            h = self.dropout(torch.relu(self.A_hat @ conv(h)))
        parts = [h.mean(dim=1), h.amax(dim=1)]
        if self.global_net is not None:
            parts.append(torch.relu(self.global_net(x @ self.select_global)))
        out = self.head(torch.cat(parts, dim=1))
        return out if self.skip is None else self.skip(x) + out


def _adjacency(layout: RegionLayout, train: np.ndarray, edges: str, top_k: int) -> np.ndarray:
    if edges not in _EDGE_BUILDERS:
        raise ValueError(f"edges={edges!r} is not one of {sorted(_EDGE_BUILDERS)}.")
    return _EDGE_BUILDERS[edges](layout, train, top_k)


def _one_hot(columns: np.ndarray, n_features: int) -> torch.Tensor:
    """(n_features, len(columns)) with a 1 at (column, j); a column of -1 stays all zero."""
    M = torch.zeros(n_features, len(columns))
    for j, col in enumerate(columns):
        if col >= 0:
            M[col, j] = 1.0
    return M


def _normalize(A: np.ndarray) -> np.ndarray:
    """Symmetric normalization with self-loops: D^-1/2 (A + I) D^-1/2."""
    A = A + np.eye(len(A), dtype=A.dtype)
    d = 1.0 / np.sqrt(A.sum(axis=1))
    return (A * d[:, None] * d[None, :]).astype(np.float32)
