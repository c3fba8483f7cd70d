"""The embedding output of a servable model becomes a few principal components for drift."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from modelcycle.embeddings import (
    EMBEDDING_PC,
    EmbeddingProjection,
    monitor_columns,
    project_embeddings,
)
from modelcycle.export import export_onnx
from modelcycle.servable import ServableModel


class Toy(nn.Module):
    """score (n,) and a 6-d embedding (n, 6) whose variance is mostly along two directions."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.linear(x)
        return embedding.sum(dim=1), embedding


def toy_servable(
    rows: int = 200, outputs: tuple[str, ...] = ("score", "embedding")
) -> ServableModel:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(rows, 4)) * [5.0, 2.0, 0.1, 0.1]).astype(np.float32)
    return ServableModel("toy", Toy(), ["x"], list(outputs), [x[:10]], reference=[x])


def test_projection_replaces_the_embedding_by_its_leading_components() -> None:
    servable = toy_servable()
    assert servable.reference is not None
    rows = torch.as_tensor(servable.reference[0])
    embeddings = servable.module(rows)[1].detach().numpy()
    project_embeddings(servable, k=3)
    assert servable.output_names == ["score", EMBEDDING_PC]
    assert servable.monitor_outputs == [EMBEDDING_PC]
    assert isinstance(servable.module, EmbeddingProjection)
    with torch.no_grad():
        score, pcs = servable.module(rows)
    pcs = pcs.numpy()
    assert pcs.shape == (200, 3)
    np.testing.assert_allclose(pcs.mean(axis=0), 0, atol=1e-4)  # centred on the reference
    variances = pcs.var(axis=0)
    assert variances[0] >= variances[1] >= variances[2]
    # the components keep almost all of the embedding's variance (it is rank 4, mostly 2)
    total = embeddings.var(axis=0).sum()
    assert variances[:2].sum() > 0.95 * total
    np.testing.assert_allclose(score.numpy(), embeddings.sum(axis=1), rtol=1e-5, atol=1e-4)


def test_without_an_embedding_nothing_changes_and_bad_settings_are_named() -> None:
    plain = toy_servable(outputs=("score", "other"))
    module = plain.module
    assert project_embeddings(plain) is plain and plain.module is module
    assert plain.monitor_outputs == []
    with pytest.raises(ValueError, match="k must be at least 1"):
        project_embeddings(toy_servable(), k=0)
    with pytest.raises(ValueError, match="1 reference rows; at least 2"):
        project_embeddings(toy_servable(rows=1))


def test_saved_models_carry_the_projection_and_export_it(tmp_path: Path) -> None:
    servable = toy_servable()
    servable.save(tmp_path / "model")
    loaded = ServableModel.load(tmp_path / "model")
    assert loaded.output_names == ["score", EMBEDDING_PC]
    assert loaded.monitor_outputs == [EMBEDDING_PC]
    path = export_onnx(
        loaded.module,
        loaded.example(),
        loaded.input_names,
        loaded.output_names,
        tmp_path / "m.onnx",
    )
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rows = loaded.held_out[0]
    _, pcs = session.run(None, {"x": rows})
    with torch.no_grad():
        expected = loaded.module(torch.as_tensor(rows))[1].numpy()
    np.testing.assert_allclose(pcs, expected, rtol=1e-4, atol=1e-5)


def test_monitor_columns_name_each_component() -> None:
    outputs = {"p": np.array([0.3]), EMBEDDING_PC: np.array([[1.0, -2.0, 0.5]])}
    assert monitor_columns(outputs, [EMBEDDING_PC]) == {
        "embedding_pc1": 1.0,
        "embedding_pc2": -2.0,
        "embedding_pc3": 0.5,
    }
    assert monitor_columns(outputs, []) == {}
