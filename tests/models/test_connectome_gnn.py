"""The connectome graph encoder: graph building, node-order invariance, baseline start."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modelcycle.models.connectome_gnn import (
    ConnectomeGraphEncoder,
    DenseGNN,
    SpectralDenoiser,
    edge_gather_index,
    n_nodes_of,
    normalize_adjacency,
    orthonormal_columns,
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
    encoder = ConnectomeGraphEncoder(space, top_k=2, readout=readout, denoise_rank=0)
    encoder.eval()
    e = torch.nn.functional.normalize(encoder(x), dim=1)
    assert np.allclose((e @ e.T).detach().numpy(), np.corrcoef(x.numpy()), atol=1e-5)
    denoised = ConnectomeGraphEncoder(space, top_k=2, readout=readout, denoise_rank=2).eval()
    assert denoised.denoiser is not None
    e = torch.nn.functional.normalize(denoised(x), dim=1)
    target = np.corrcoef(denoised.denoiser(x).detach().numpy())  # the denoised baseline
    assert np.allclose((e @ e.T).detach().numpy(), target, atol=1e-5)
    loss = (encoder(x) ** 2).sum()
    loss.backward()
    assert encoder.head.weight.grad is not None and encoder.head.weight.grad.abs().sum() > 0


def test_a_top_k_as_large_as_the_graph_is_refused() -> None:
    space = FeatureSpace([f"e{i}" for i in range(E)], np.zeros((2, E)))
    with pytest.raises(ValueError, match="top_k=6"):
        ConnectomeGraphEncoder(space, top_k=N)
    with pytest.raises(ValueError, match="readout='sum'"):
        ConnectomeGraphEncoder(space, readout="sum")


def _low_rank_connectomes(n_subjects: int, n_nodes: int, rank: int, seed: int) -> torch.Tensor:
    """(B, N, N) correlation matrices of rank `rank` exactly: a few networks, no noise."""
    g = torch.Generator().manual_seed(seed)
    backbone = torch.randn(n_nodes, rank, generator=g)
    loadings = backbone + torch.randn(n_subjects, n_nodes, rank, generator=g)
    cov = loadings @ loadings.transpose(1, 2)
    d = cov.diagonal(dim1=1, dim2=2).rsqrt()
    return cov * d.unsqueeze(-1) * d.unsqueeze(-2)


def _edges(C: torch.Tensor) -> torch.Tensor:
    rows, cols = torch.triu_indices(C.shape[-1], C.shape[-1], offset=1)
    return C[:, rows, cols]


def test_gram_schmidt_gives_orthonormal_columns_of_the_same_span() -> None:
    H = torch.randn(3, 10, 4)
    Q = orthonormal_columns(H)
    assert torch.allclose(Q.transpose(1, 2) @ Q, torch.eye(4).expand(3, 4, 4), atol=1e-5)
    projected = Q @ (Q.transpose(1, 2) @ H)  # H lies in span(Q)
    assert torch.allclose(projected, H, atol=1e-4)


def test_the_spectral_denoiser_keeps_k_network_modes_and_removes_the_rest() -> None:
    clean = _low_rank_connectomes(n_subjects=30, n_nodes=12, rank=3, seed=1)
    space = FeatureSpace([f"e{i}" for i in range(66)], _edges(clean).numpy())
    denoiser = SpectralDenoiser(space, rank=3)
    out = denoiser(_edges(clean))
    assert torch.allclose(out.mean(dim=0), torch.zeros(66), atol=1e-4)  # z-scored on training
    r = torch.tanh(out * denoiser.out_std + denoiser.out_mean)
    assert torch.allclose(r, _edges(clean), atol=1e-3)  # a rank-3 connectome passes unchanged
    # Add full-rank noise: what comes out is again a rank-3 structure (unit diagonal).
    noise = torch.randn(30, 12, 12, generator=torch.Generator().manual_seed(3))
    noisy = (clean + 0.1 * (noise + noise.transpose(1, 2))).clamp(-0.99, 0.99)
    r = torch.tanh(denoiser(_edges(noisy)) * denoiser.out_std + denoiser.out_mean)
    square = denoiser.square(r)
    assert torch.linalg.matrix_rank(square, atol=1e-3).max() == 3
    assert torch.linalg.matrix_rank(noisy, atol=1e-3).min() == 12


def test_the_denoiser_maps_processed_edges_back_and_follows_the_node_order() -> None:
    estimated = _edges(_low_rank_connectomes(12, 8, 4, seed=2))
    mean, std = estimated.mean(dim=0), estimated.std(dim=0)
    processed = (estimated - mean) / std
    names = [f"e{i}" for i in range(estimated.shape[1])]
    raw = SpectralDenoiser(FeatureSpace(names, estimated.numpy()), rank=2)
    space = FeatureSpace(names, processed.numpy(), offset=mean.numpy(), scale=std.numpy())
    assert torch.allclose(SpectralDenoiser(space, rank=2)(processed), raw(estimated), atol=1e-4)
    # Relabel the nodes: the same denoiser fitted on relabelled rows gives relabelled edges.
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    rows, cols = torch.triu_indices(8, 8, offset=1)
    cell = edge_gather_index(8).reshape(8, 8)
    moved = cell[perm][:, perm][rows, cols]  # edge index read by each relabelled edge
    relabelled = SpectralDenoiser(FeatureSpace(names, estimated[:, moved].numpy()), rank=2)
    assert torch.allclose(relabelled(estimated[:, moved]), raw(estimated)[:, moved], atol=1e-4)


def test_a_denoising_rank_as_large_as_the_graph_is_refused() -> None:
    space = FeatureSpace([f"e{i}" for i in range(E)], np.zeros((2, E)))
    with pytest.raises(ValueError, match=r"denoise_rank=6 must be between 0 \(raw edges\) and 5"):
        ConnectomeGraphEncoder(space, top_k=2, denoise_rank=N)
    assert ConnectomeGraphEncoder(space, top_k=2, denoise_rank=0).denoiser is None


@pytest.mark.parametrize(
    ("values", "said"),
    [
        ({"top_k": 8, "denoise_rank": 0}, "top_k=8: give at most 7 with data.n_parcels=8"),
        ({"top_k": 4, "denoise_rank": 16}, "denoise_rank=16: give 0 (raw edges) to 7"),
    ],
)
def test_sizes_past_the_data_configs_nodes_are_refused_naming_both_keys(
    values: dict[str, int], said: str
) -> None:
    given = ("data.n_parcels=8", 8, "raise data.n_parcels")
    with pytest.raises(ValueError, match=r"or raise data\.n_parcels") as refused:
        ConnectomeGraphEncoder.CHECK_NODES(values, *given)
    assert said in str(refused.value)
    ConnectomeGraphEncoder.CHECK_NODES({"top_k": 7, "denoise_rank": 0}, *given)
    ConnectomeGraphEncoder.CHECK_NODES({"top_k": 4, "denoise_rank": 16, "residual": False}, *given)
