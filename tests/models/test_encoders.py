"""Encoders: output widths, the correlation-baseline start, layer options, graph edges."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from modelcycle.models.encoders import FeatureSpace, MLPEncoder, RegionGraphEncoder

# Regional measures (3 cortical nodes, 2 subcortical) and two global measures.
NAMES = [
    "L_precuneus_thickavg",
    "L_precuneus_surfarea",
    "L_precuneus_gmvol",
    "R_precuneus_gmvol",
    "R_precuneus_thickavg",
    "L_cuneus_thickavg",
    "Lhippo",
    "Rhippo",
    "EstimatedTotalIntraCranialVol",
    "CSF",
]


def _space(names: list[str] | None = None, n_train: int = 8, seed: int = 0) -> FeatureSpace:
    names = NAMES if names is None else names
    rng = np.random.default_rng(seed)
    return FeatureSpace(names, rng.normal(size=(n_train, len(names))))


def _rows(n: int, width: int, seed: int = 1) -> torch.Tensor:
    return torch.as_tensor(np.random.default_rng(seed).normal(size=(n, width)), dtype=torch.float32)


def _cosine_matrix(z: torch.Tensor) -> np.ndarray:
    u = torch.nn.functional.normalize(z, dim=1)
    return (u @ u.T).detach().numpy()


def test_feature_space_width_is_the_number_of_names() -> None:
    assert _space().n_features == len(NAMES)


def test_residual_mlp_keeps_input_width_and_starts_at_pearson_correlation() -> None:
    space = _space()
    torch.manual_seed(0)
    encoder = MLPEncoder(space, hidden=(16, 8), dim=5, residual=True, activation=True)
    x = _rows(6, space.n_features)
    z = encoder(x)
    assert z.shape == (6, space.n_features)  # `dim` is ignored with residual
    expected = np.corrcoef(x.numpy())  # rows are subjects: Pearson r between subjects
    np.testing.assert_allclose(_cosine_matrix(z), expected, atol=1e-5)


def test_non_residual_mlp_has_width_dim_and_is_not_the_baseline() -> None:
    space = _space()
    torch.manual_seed(0)
    encoder = MLPEncoder(space, hidden=(16,), dim=5, residual=False)
    x = _rows(6, space.n_features)
    z = encoder(x)
    assert z.shape == (6, 5)
    assert encoder.skip is None
    assert not np.allclose(_cosine_matrix(z), np.corrcoef(x.numpy()), atol=1e-3)


@pytest.mark.parametrize(
    ("hidden", "activation", "n_linear", "n_gelu"),
    [((32,), False, 2, 0), ((32,), True, 2, 1), ((16, 8), True, 3, 2), ((), True, 1, 0)],
)
def test_hidden_and_activation_set_the_layers(
    hidden: tuple[int, ...], activation: bool, n_linear: int, n_gelu: int
) -> None:
    encoder = MLPEncoder(_space(), hidden=hidden, dim=4, activation=activation, residual=False)
    layers = list(encoder.net)
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    assert len(linears) == n_linear
    assert sum(isinstance(m, nn.GELU) for m in layers) == n_gelu
    widths = [(m.in_features, m.out_features) for m in linears]
    chain = [len(NAMES), *hidden, 4]
    assert widths == list(itertools.pairwise(chain))


def test_residual_mlp_last_layer_starts_at_zero_and_skip_weights_at_one() -> None:
    encoder = MLPEncoder(_space(), hidden=(8,), residual=True)
    last = encoder.net[-1]
    assert isinstance(last, nn.Linear)
    assert torch.count_nonzero(last.weight) == 0 and torch.count_nonzero(last.bias) == 0
    assert encoder.skip is not None
    assert torch.equal(encoder.skip.weight, torch.ones(len(NAMES)))


@pytest.mark.parametrize("edges", ["lobe", "covariance"])
def test_graph_encoder_shapes(edges: str) -> None:
    space = _space()
    torch.manual_seed(0)
    x = _rows(5, space.n_features)
    non_residual = RegionGraphEncoder(space, hidden=8, dim=6, edges=edges, top_k=2, residual=False)
    assert non_residual(x).shape == (5, 6)
    residual = RegionGraphEncoder(space, hidden=8, dim=6, edges=edges, top_k=2, residual=True)
    assert residual(x).shape == (5, space.n_features)
    # 5 nodes: L_cuneus, L_hippo, L_precuneus, R_hippo, R_precuneus; A_hat is over nodes.
    assert tuple(residual.A_hat.shape) == (5, 5)
    assert residual.global_net is not None and residual.global_net.in_features == 2


@pytest.mark.parametrize("edges", ["lobe", "covariance"])
def test_residual_graph_encoder_starts_at_pearson_correlation(edges: str) -> None:
    space = _space()
    torch.manual_seed(0)
    encoder = RegionGraphEncoder(space, hidden=8, edges=edges, top_k=2, residual=True)
    encoder.train()  # dropout on: the zero head still hides it
    x = _rows(6, space.n_features)
    np.testing.assert_allclose(_cosine_matrix(encoder(x)), np.corrcoef(x.numpy()), atol=1e-5)


def test_normalized_adjacency_is_symmetric_with_self_loops() -> None:
    encoder = RegionGraphEncoder(_space(), edges="lobe", residual=False)
    A_hat = encoder.A_hat.numpy()
    np.testing.assert_allclose(A_hat, A_hat.T)
    assert (np.diag(A_hat) > 0).all()
    # L_cuneus (occipital) has no same-lobe neighbour nor homotopic partner here: only itself.
    assert A_hat[0, 0] == pytest.approx(1.0)
    assert np.count_nonzero(A_hat[0]) == 1


def test_unknown_edges_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="knn") as info:
        RegionGraphEncoder(_space(), edges="knn")
    assert "covariance" in str(info.value) and "lobe" in str(info.value)


def test_graph_encoder_needs_a_regional_measure() -> None:
    space = _space(["EstimatedTotalIntraCranialVol", "CSF", "LThickness", "lhCortexVol"])
    with pytest.raises(ValueError, match="regional measure"):
        RegionGraphEncoder(space)


def test_gradient_reaches_node_identities_and_convolutions() -> None:
    space = _space()
    torch.manual_seed(0)
    encoder = RegionGraphEncoder(space, hidden=8, layers=2, dim=4, dropout=0.0, residual=False)
    encoder(_rows(6, space.n_features)).pow(2).sum().backward()
    assert encoder.identity.grad is not None
    assert torch.count_nonzero(encoder.identity.grad) > 0
    for conv in encoder.convs:
        assert isinstance(conv, nn.Linear)
        assert conv.weight.grad is not None
        assert torch.count_nonzero(conv.weight.grad) > 0
    assert encoder.global_net is not None and encoder.global_net.weight.grad is not None


def test_graph_encoder_reads_regional_and_global_inputs() -> None:
    space = _space()
    torch.manual_seed(0)
    encoder = RegionGraphEncoder(space, hidden=8, dim=4, dropout=0.0, residual=False).eval()
    x = _rows(1, space.n_features)
    base = encoder(x)
    for col in (NAMES.index("Lhippo"), NAMES.index("EstimatedTotalIntraCranialVol")):
        moved = x.clone()
        moved[0, col] += 5.0
        assert not torch.allclose(encoder(moved), base)


@pytest.mark.parametrize("kind", ["mlp", "graph"])
def test_same_seed_same_outputs(kind: str) -> None:
    space = _space()
    x = _rows(4, space.n_features)

    def build(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        if kind == "mlp":
            return MLPEncoder(space, hidden=(8,), dim=4, residual=False).eval()
        return RegionGraphEncoder(space, hidden=8, dim=4, residual=False).eval()

    with torch.no_grad():
        first, again, other = build(3)(x), build(3)(x), build(4)(x)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
