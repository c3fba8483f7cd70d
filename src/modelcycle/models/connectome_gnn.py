"""A dense graph network over a connectome: parcels are nodes, strong connections are edges.

Inputs are flat upper-triangle connectome vectors (batch, n_edges), as the pair datamodule
and the correlation baseline use them. Inside, each vector becomes a graph with a fixed node
count: node features = the node's connectivity profile (its row of the matrix), edges = the
top-k |value| of each row (symmetrized), weighted by |value|. Everything is dense matrix
algebra (gather, top-k, matmul), so the module exports to ONNX with a dynamic batch axis.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from modelcycle.kinds import Range, is_whole
from modelcycle.models.encoders import CorrelationSkip, FeatureSpace


def n_nodes_of(n_edges: int) -> int:
    """Node count N of an upper-triangle vector of N(N-1)/2 edges."""
    n = (1 + math.isqrt(1 + 8 * n_edges)) // 2
    if n * (n - 1) // 2 != n_edges:
        raise ValueError(
            f"{n_edges} features are not the upper triangle of a square connectome "
            "(expected N(N-1)/2 for some N)."
        )
    return n


def edge_gather_index(n_nodes: int) -> torch.Tensor:
    """(N*N,) index into [edges..., 0]: cell (i, j) reads edge (min, max); the diagonal a 0."""
    n_edges = n_nodes * (n_nodes - 1) // 2
    index = torch.full((n_nodes, n_nodes), n_edges, dtype=torch.long)
    rows, cols = torch.triu_indices(n_nodes, n_nodes, offset=1)
    edge = torch.arange(n_edges)
    index[rows, cols] = edge
    index[cols, rows] = edge
    return index.reshape(-1)


def top_k_adjacency(C: torch.Tensor, k: int) -> torch.Tensor:
    """(B, N, N) connectomes → weighted adjacency: each node's k strongest |links|, symmetric."""
    strength = C.abs() * (1 - torch.eye(C.shape[-1], dtype=C.dtype))
    kth = torch.topk(strength, k, dim=-1).values[..., -1:]  # (B, N, 1)
    kept = strength * (strength >= kth).to(C.dtype)
    return torch.maximum(kept, kept.transpose(1, 2))


def normalize_adjacency(A: torch.Tensor) -> torch.Tensor:
    """Symmetric normalization with self-loops, batched: D^-1/2 (A + I) D^-1/2."""
    A = A + torch.eye(A.shape[-1], dtype=A.dtype)
    d = A.sum(dim=-1).clamp_min(1e-6).rsqrt()
    return A * d.unsqueeze(-1) * d.unsqueeze(-2)


def orthonormal_columns(H: torch.Tensor) -> torch.Tensor:
    """(B, N, k) → (B, N, k) orthonormal columns spanning the same space (Gram-Schmidt).

    Unrolled over the k columns with products and sums only, so it exports to ONNX (which
    has no QR or eigen-decomposition).
    """
    columns: list[torch.Tensor] = []
    for j in range(H.shape[-1]):
        v = H[..., j]
        for q in columns:
            v = v - (q * v).sum(dim=-1, keepdim=True) * q
        columns.append(v / v.norm(dim=-1, keepdim=True).clamp_min(1e-6))
    return torch.stack(columns, dim=-1)


class SpectralDenoiser(nn.Module):
    """Each connectome read through its own leading network modes: a low-rank graph filter.

    A resting-state connectome is a few large-scale networks (low rank) plus estimation noise
    spread over every edge. The group's k leading eigenvectors (mean training connectome) pass
    once through the subject's graph (C @ modes: one propagation step from node positions in
    the group's networks), are orthonormalized, and the connectome is projected onto them:
    R = Q Qᵀ C Q Qᵀ, rescaled to a unit diagonal. Its edges are Fisher-z transformed and
    z-scored on the training rows, so the Pearson correlation of two outputs is the baseline
    on denoised connectomes. Node-permutation equivariant: permuting the training rows
    permutes `modes` with them.

    Args:
        space: Processed connectome edges; `space.offset`/`space.scale` map them back to r.
        rank: Number of modes kept (1 ≤ rank < nodes).
    """

    cell: torch.Tensor  # (N*N,) gather index from padded edges to the square matrix
    upper: torch.Tensor  # (E,) flat index of each upper-triangle cell (i, j), row-major
    modes: torch.Tensor  # (N, rank) leading eigenvectors of the mean training connectome
    offset: torch.Tensor  # (E,) raw = processed * scale + offset
    scale: torch.Tensor
    out_mean: torch.Tensor  # (E,) z-scoring of the denoised edges, fitted on training rows
    out_std: torch.Tensor

    def __init__(self, space: FeatureSpace, rank: int) -> None:
        super().__init__()
        n_nodes, n_edges = n_nodes_of(space.n_features), space.n_features
        if not 1 <= rank < n_nodes:
            raise ValueError(f"denoise_rank={rank} must be between 1 and {n_nodes - 1}.")
        offset = np.zeros(n_edges) if space.offset is None else space.offset
        scale = np.ones(n_edges) if space.scale is None else space.scale
        self.register_buffer("cell", edge_gather_index(n_nodes))
        rows, cols = torch.triu_indices(n_nodes, n_nodes, offset=1)
        self.register_buffer("upper", rows * n_nodes + cols)
        self.register_buffer("modes", torch.zeros(n_nodes, rank))  # set below from training
        self.register_buffer("offset", torch.as_tensor(offset, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))
        train = torch.as_tensor(space.train, dtype=torch.float32)
        mean_connectome = self.square(train * self.scale + self.offset).mean(dim=0)
        self.modes = torch.linalg.eigh(mean_connectome).eigenvectors[:, -rank:]
        self.register_buffer("out_mean", torch.zeros(n_edges))
        self.register_buffer("out_std", torch.ones(n_edges))
        with torch.no_grad():
            fitted = self(train)
        self.out_mean, self.out_std = fitted.mean(dim=0), fitted.std(dim=0).clamp_min(1e-6)

    def square(self, r: torch.Tensor) -> torch.Tensor:
        """(B, E) correlations → (B, N, N) with a unit diagonal."""
        n = self.modes.shape[0]
        padded = torch.cat([r, torch.ones_like(r[:, :1])], dim=1)  # the diagonal reads the 1
        return padded[:, self.cell].reshape(-1, n, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, E) processed edges → (B, E) z-scored Fisher-z edges of the denoised connectome."""
        C = self.square(x * self.scale + self.offset)
        Q = orthonormal_columns(C @ self.modes)  # (B, N, k)
        R = Q @ (Q.transpose(1, 2) @ C @ Q) @ Q.transpose(1, 2)
        d = R.diagonal(dim1=1, dim2=2).abs().clamp_min(1e-6).rsqrt()
        R = R * d.unsqueeze(-1) * d.unsqueeze(-2)
        r = R.flatten(1)[:, self.upper].clamp(-0.999, 0.999)
        z = 0.5 * torch.log((1 + r) / (1 - r))  # Fisher z; ONNX export has no atanh
        return (z - self.out_mean) / self.out_std


class DenseGraphLayer(nn.Module):
    """One message-passing layer (GraphConv style): h' = relu(Â h W + h W_root)."""

    def __init__(self, width_in: int, width_out: int) -> None:
        super().__init__()
        self.neighbours = nn.Linear(width_in, width_out)
        self.root = nn.Linear(width_in, width_out, bias=False)

    def forward(self, h: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        """(B, N, F), (B, N, N) → (B, N, H)."""
        return torch.relu(adjacency @ self.neighbours(h) + self.root(h))


class DenseGNN(nn.Module):
    """Stacked dense graph layers with a mean-and-max readout: invariant to node order."""

    def __init__(self, width_in: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        widths = [width_in] + [hidden] * layers
        self.layers = nn.ModuleList(DenseGraphLayer(a, b) for a, b in itertools.pairwise(widths))
        self.dropout = nn.Dropout(dropout)

    def nodes(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        """Node features (B, N, F), normalized adjacency (B, N, N) → node states (B, N, H)."""
        h = x
        for layer in self.layers:
            h = self.dropout(layer(h, adjacency))
        return h

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        """Node features (B, N, F), normalized adjacency (B, N, N) → graph vector (B, 2H)."""
        h = self.nodes(x, adjacency)
        return torch.cat([h.mean(dim=1), h.amax(dim=1)], dim=1)


class ConnectomeGraphEncoder(nn.Module):
    """Siamese encoder over one subject's connectome graph.

    Args:
        space: The input features: N(N-1)/2 processed connectome edges.
        hidden: Width of the graph layers.
        layers: Number of graph layers.
        top_k: Edges kept per node.
        dropout: Dropout after each graph layer.
        dim: Embedding width when `residual` is false.
        residual: Add the graph readout, through a zero-initialized layer, to the
            `CorrelationSkip` of the edges, so training starts at the correlation baseline.
        readout: `pool` (mean and max over nodes: invariant to node order) or `nodes`
            (every node's state in atlas order: a fixed atlas makes node identity meaningful,
            and a fingerprint lives in which region deviates).
        denoise_rank: With `residual`, the skip reads the connectome through this many
            network modes (`SpectralDenoiser`); 0 keeps the raw edges.
    """

    cell: torch.Tensor  # (N*N,) gather index from padded edges to the square matrix

    #: Checked when the config is assembled, before the data is read; the upper bounds of
    #: top_k and denoise_rank (the nodes less one) against the data config's node count by
    #: `CHECK_NODES`, and by the constructor for an atlas that fixes its own.
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"readout": ("pool", "nodes")}
    RANGES: ClassVar[dict[str, Range]] = {
        "hidden": (1, None),
        "layers": (1, None),
        "top_k": (1, None),
        "dropout": (0, 1),
        "dim": (1, None),
        "denoise_rank": (0, None),
    }

    @staticmethod
    def CHECK_NODES(values: dict[str, Any], said: str, nodes: int, change: str) -> None:  # noqa: N802
        """Refuse a top_k or denoise_rank a graph of `nodes` nodes cannot hold.

        `said`: the data setting that gives the count (`data.n_parcels=32`); `change`: how
        to give more nodes (`raise data.n_parcels`).
        """
        top_k, rank = values.get("top_k", 0), values.get("denoise_rank", 0)
        if is_whole(top_k) and top_k >= nodes:
            raise ValueError(
                f"top_k={top_k}: give at most {nodes - 1} with {said} (a node links to the "
                f"{nodes - 1} others), or {change}."
            )
        if values.get("residual", True) and is_whole(rank) and rank >= nodes:
            raise ValueError(
                f"denoise_rank={rank}: give 0 (raw edges) to {nodes - 1} with {said} (fewer "
                f"network modes than the graph's nodes), or {change}."
            )

    def __init__(
        self,
        space: FeatureSpace,
        hidden: int = 32,
        layers: int = 2,
        top_k: int = 8,
        dropout: float = 0.1,
        dim: int = 64,
        residual: bool = True,
        readout: str = "pool",
        denoise_rank: int = 7,
    ) -> None:
        super().__init__()
        if readout not in self.CHOICES["readout"]:
            raise ValueError(f"readout={readout!r} is not one of {list(self.CHOICES['readout'])}.")
        self.n_nodes, self.readout = n_nodes_of(space.n_features), readout
        if not 1 <= top_k < self.n_nodes:
            raise ValueError(f"top_k={top_k} must be between 1 and {self.n_nodes - 1} (nodes - 1).")
        if residual and not 0 <= denoise_rank < self.n_nodes:
            raise ValueError(
                f"denoise_rank={denoise_rank} must be between 0 (raw edges) and "
                f"{self.n_nodes - 1} (nodes - 1)."
            )
        self.top_k = top_k
        self.register_buffer("cell", edge_gather_index(self.n_nodes))
        self.gnn = DenseGNN(self.n_nodes, hidden, layers, dropout)
        width = 2 * hidden if readout == "pool" else self.n_nodes * hidden
        self.head = nn.Linear(width, space.n_features if residual else dim)
        self.skip = CorrelationSkip(space.n_features) if residual else None
        use_denoiser = residual and denoise_rank > 0
        self.denoiser = SpectralDenoiser(space, denoise_rank) if use_denoiser else None
        if residual:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def graph(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Edges (B, E) → node features (B, N, N) and normalized adjacency (B, N, N)."""
        padded = torch.cat([x, torch.zeros_like(x[:, :1])], dim=1)
        C = padded[:, self.cell].reshape(-1, self.n_nodes, self.n_nodes)
        return C, normalize_adjacency(top_k_adjacency(C, self.top_k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, E) → (B, E) when residual, else (B, dim)."""
        nodes, adjacency = self.graph(x)
        if self.readout == "pool":
            out = self.head(self.gnn(nodes, adjacency))
        else:
            out = self.head(self.gnn.nodes(nodes, adjacency).flatten(1))
        if self.skip is None:
            return out
        return self.skip(x if self.denoiser is None else self.denoiser(x)) + out
