"""Encoders that map a flat feature vector (batch, n_features) to an embedding (batch, dim)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from modelcycle.data.freesurfer import N_SLOTS, RegionLayout


@dataclass(frozen=True)
class FeatureSpace:
    """What an encoder may know of its inputs: names, and processed training rows."""

    names: list[str]
    train: np.ndarray  # (n_train, n_features), already processed

    @property
    def n_features(self) -> int:
        """Width of the flat input vector."""
        return len(self.names)


class MLPEncoder(nn.Module):
    """An MLP over the whole measure vector."""

    def __init__(
        self, space: FeatureSpace, hidden: tuple[int, ...] = (256,), dim: int = 64,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        width = space.n_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.GELU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, n_features) → (batch, dim)."""
        return self.net(x)


class RegionGraphEncoder(nn.Module):
    """A dense graph network over FreeSurfer regions, with global measures beside it.

    Nodes are brain regions carrying their measures (surface area, thickness, volume) and a
    learned identity; edges are fixed: structural covariance over the training rows (top-k
    |r| per node) or anatomical lobe adjacency. Dense adjacency keeps the node count fixed, so
    the module exports to ONNX as plain matrix products.
    """

    def __init__(
        self,
        space: FeatureSpace,
        hidden: int = 32,
        layers: int = 2,
        dim: int = 64,
        edges: str = "covariance",
        top_k: int = 8,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        layout = RegionLayout.from_names(space.names)
        adjacency = _adjacency(layout, space.train, edges, top_k)
        n_nodes = len(layout.nodes)
        self.register_buffer("node_index", torch.as_tensor(layout.index))
        self.register_buffer("global_index", torch.as_tensor(layout.global_index))
        self.register_buffer("A_hat", torch.as_tensor(_normalize(adjacency)))
        self.identity = nn.Parameter(torch.randn(n_nodes, 8) * 0.1)
        widths = [N_SLOTS * 2 + 8] + [hidden] * layers
        self.convs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:], strict=False))
        self.dropout = nn.Dropout(dropout)
        n_global = len(layout.global_index)
        self.global_net = nn.Linear(n_global, hidden) if n_global else None
        readout = 2 * hidden + (hidden if n_global else 0)
        self.head = nn.Linear(readout, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, n_features) → (batch, dim)."""
        batch = x.shape[0]
        padded = torch.cat([x, x.new_zeros(batch, 1)], dim=1)
        values = padded[:, self.node_index]  # (batch, nodes, slots); -1 picks the zero column
        present = (self.node_index >= 0).to(x.dtype).expand(batch, -1, -1)
        ident = self.identity.expand(batch, -1, -1)
        h = torch.cat([values, present, ident], dim=2)  # (batch, nodes, 2*slots + 8)
        for conv in self.convs:
            h = self.dropout(torch.relu(self.A_hat @ conv(h)))
        parts = [h.mean(dim=1), h.amax(dim=1)]
        if self.global_net is not None:
            parts.append(torch.relu(self.global_net(x[:, self.global_index])))
        return self.head(torch.cat(parts, dim=1))


_EDGE_BUILDERS = {
    "covariance": lambda layout, train, k: layout.covariance_adjacency(train, k),
    "lobe": lambda layout, train, k: layout.lobe_adjacency(),
}


def _adjacency(layout: RegionLayout, train: np.ndarray, edges: str, top_k: int) -> np.ndarray:
    if edges not in _EDGE_BUILDERS:
        raise ValueError(f"edges={edges!r} is not one of {sorted(_EDGE_BUILDERS)}.")
    return _EDGE_BUILDERS[edges](layout, train, top_k)


def _normalize(A: np.ndarray) -> np.ndarray:
    """Symmetric normalization with self-loops: D^-1/2 (A + I) D^-1/2."""
    A = A + np.eye(len(A), dtype=A.dtype)
    d = 1.0 / np.sqrt(A.sum(axis=1))
    return (A * d[:, None] * d[None, :]).astype(np.float32)
