"""The connectome graph encoder: graph building, node-order invariance, baseline start."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modelcycle.models.connectome_gnn import (
    ConnectomeGraphEncoder,
    DenseGNN,
    edge_gather_index,
    n_nodes_of,
    normalize_adjacency,
    top_k_adjacency,
)
from modelcycle.models.encoders import FeatureSpace

N = 6
E = N * (N - 1) // 2


def _connectomes(batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 40, N, generator=g)
    return torch.stack([torch.corrcoef(s.T) for s in x])  # (B, N, N)


def test_the_edge_vector_round_trips_to_the_symmetric_matrix() -> None:
    C = _connectomes(2)
    rows, cols = torch.triu_indices(N, N, offset=1)
    edges = C[:, rows, cols]
    padded = torch.cat([edges, torch.zeros(2, 1)], dim=1)
    rebuilt = padded[:, edge_gather_index(N)].reshape(2, N, N)
    off_diagonal = ~torch.eye(N, dtype=torch.bool)
    assert torch.allclose(rebuilt[:, off_diagonal], C[:, off_diagonal])
    assert n_nodes_of(E) == N
    with pytest.raises(ValueError, match=r"N\(N-1\)/2"):
        n_nodes_of(E + 1)


def test_top_k_keeps_each_nodes_strongest_links_symmetrically() -> None:
    C = _connectomes(1)
    A = top_k_adjacency(C, 2)[0]
    assert torch.equal(A, A.T) and torch.all(A.diagonal() == 0)
    strongest = (C[0].abs() - torch.eye(N)).topk(2, dim=1).indices
    for i in range(N):
        for j in strongest[i]:
            assert torch.isclose(A[i, j], C[0, i, j].abs())
    assert ((A > 0).sum(dim=1) >= 2).all()


def test_graph_building_and_the_gnn_do_not_depend_on_node_order() -> None:
    torch.manual_seed(0)
    C = _connectomes(3)
    perm = torch.randperm(N)
    C_perm = C[:, perm][:, :, perm]
    A, A_perm = (normalize_adjacency(top_k_adjacency(c, 3)) for c in (C, C_perm))
    assert torch.allclose(A_perm, A[:, perm][:, :, perm], atol=1e-6)  # equivariant
    gnn = DenseGNN(width_in=4, hidden=8, layers=2, dropout=0.0).eval()
    features = torch.randn(3, N, 4)  # one feature vector per node, moved with its node
    out = gnn(features, A)
    assert torch.allclose(gnn(features[:, perm], A_perm), out, atol=1e-5)
    assert not torch.allclose(gnn(features[:, perm], A), out, atol=1e-3)  # the graph matters


@pytest.mark.parametrize("readout", ["pool", "nodes"])
def test_the_encoder_starts_at_the_correlation_baseline_and_learns_from_there(readout: str) -> None:
    C = _connectomes(4)
    rows, cols = torch.triu_indices(N, N, offset=1)
    x = C[:, rows, cols]
    space = FeatureSpace([f"e{i}" for i in range(E)], x.numpy())
    encoder = ConnectomeGraphEncoder(space, top_k=2, readout=readout)
    encoder.eval()
    e = torch.nn.functional.normalize(encoder(x), dim=1)
    assert np.allclose((e @ e.T).detach().numpy(), np.corrcoef(x.numpy()), atol=1e-5)
    loss = (encoder(x) ** 2).sum()
    loss.backward()
    assert encoder.head.weight.grad is not None and encoder.head.weight.grad.abs().sum() > 0


def test_a_top_k_as_large_as_the_graph_is_refused() -> None:
    space = FeatureSpace([f"e{i}" for i in range(E)], np.zeros((2, E)))
    with pytest.raises(ValueError, match="top_k=6"):
        ConnectomeGraphEncoder(space, top_k=N)
    with pytest.raises(ValueError, match="readout='sum'"):
        ConnectomeGraphEncoder(space, readout="sum")
