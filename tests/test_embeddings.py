"""The embedding output of a servable model becomes its distance from the reference, for drift."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from modelcycle.embedding_columns import EMBEDDING_DISTANCE, answer_columns, monitor_columns
from modelcycle.embeddings import EmbeddingProjection, project_embeddings
from modelcycle.export import export_onnx
from modelcycle.servable import ServableModel


class Toy(nn.Module):
    """score (n,) and a 6-d embedding (n, 6): a linear map of 4-d inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.linear(x)
        return embedding.sum(dim=1), embedding


def toy_servable(
    rows: int = 400, outputs: tuple[str, ...] = ("score", "embedding")
) -> ServableModel:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(rows, 4)) * [5.0, 2.0, 1.0, 0.1]).astype(np.float32)
    return ServableModel("toy", Toy(), ["x"], list(outputs), [x[:10]], reference=[x])


def _run(module: nn.Module, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        return [o.numpy() for o in module(torch.as_tensor(x))]


def test_the_embedding_becomes_a_mahalanobis_distance_in_its_leading_components() -> None:
    servable = toy_servable()
    assert servable.reference is not None
    x = servable.reference[0]
    score, embeddings = _run(servable.module, x)
    project_embeddings(servable, k=3)
    assert servable.output_names == ["score", EMBEDDING_DISTANCE]
    assert servable.monitor_outputs == [EMBEDDING_DISTANCE]
    assert isinstance(servable.module, EmbeddingProjection)
    projected_score, distance = _run(servable.module, x)
    np.testing.assert_allclose(projected_score, score, rtol=1e-6)
    assert distance.shape == (400,) and (distance >= 0).all()
    assert distance.mean() == pytest.approx(3 * 399 / 400, rel=1e-4)  # k unit-variance parts
    # the same as a Mahalanobis distance computed here from the embeddings' own PCA
    centred = embeddings - embeddings.mean(axis=0)
    values, vectors = np.linalg.eigh(np.cov(centred.T))
    top = vectors[:, ::-1][:, :3] / np.sqrt(values[::-1][:3])
    np.testing.assert_allclose(distance, ((centred @ top) ** 2).sum(axis=1), rtol=1e-3, atol=1e-3)
    # inputs shifted along their main direction move far away; unshifted ones do not
    shifted = x + np.array([20.0, 0, 0, 0], dtype=np.float32)  # 4 sd along the first input
    assert _run(servable.module, shifted)[1].mean() > 3 * distance.mean()


def test_without_an_embedding_nothing_changes_and_bad_settings_are_named() -> None:
    plain = toy_servable(outputs=("score", "other"))
    module = plain.module
    assert project_embeddings(plain) is plain and plain.module is module
    assert plain.monitor_outputs == []
    with pytest.raises(ValueError, match="k must be at least 1"):
        project_embeddings(toy_servable(), k=0)
    with pytest.raises(ValueError, match="1 reference rows; at least 2"):
        project_embeddings(toy_servable(rows=1))


def test_components_without_variance_are_left_out() -> None:
    servable = toy_servable()
    assert servable.reference is not None
    servable.reference = [np.repeat(servable.reference[0][:1], 50, axis=0)]  # one point
    servable.reference[0][::2, 0] += 1.0  # varies along one direction only
    project_embeddings(servable, k=3)
    assert isinstance(servable.module, EmbeddingProjection)
    assert servable.module.components.shape[0] == 1
    assert np.isfinite(_run(servable.module, servable.held_out[0])[1]).all()


def test_saved_models_carry_the_projection_and_export_it(tmp_path: Path) -> None:
    servable = toy_servable()
    servable.save(tmp_path / "model")
    loaded = ServableModel.load(tmp_path / "model")
    assert loaded.output_names == ["score", EMBEDDING_DISTANCE]
    assert loaded.monitor_outputs == [EMBEDDING_DISTANCE]
    names = loaded.input_names, loaded.output_names
    path = export_onnx(loaded.module, loaded.example(), *names, tmp_path / "m.onnx")
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rows = loaded.held_out[0]
    _, distance = session.run(None, {"x": rows})
    np.testing.assert_allclose(distance, _run(loaded.module, rows)[1], rtol=1e-4, atol=1e-4)


def test_monitor_columns_name_each_value() -> None:
    outputs = {"p": np.array([0.3]), "d": np.array([2.5]), "v": np.array([[1.0, -2.0]])}
    assert monitor_columns(outputs, ["d"]) == {"d": 2.5}
    assert monitor_columns(outputs, ["v"]) == {"v1": 1.0, "v2": -2.0}
    assert monitor_columns(outputs, []) == {}


def test_answer_columns_take_each_outputs_first_value_and_class_but_none_of_a_map() -> None:
    from modelcycle.monitoring.drift import reference_frame
    from modelcycle.tasks.segmentation_serving import SegmentationServing

    one = {
        "confidence": np.array([0.9]),
        "class_probability": np.array([[0.2, 0.8]]),
        "probabilities": np.full((1, 2, 4, 4), 0.5),  # a map per request: one pixel says nothing
    }
    columns = {"confidence": 0.9, "class_probability": 0.2, "class_probability_argmax": 1.0}
    assert answer_columns(one, list(one)) == pytest.approx(columns)
    # a reference frame has the same columns as a server's captures
    adapter = SegmentationServing({"classes": ["a", "b"], "image_size": 4})
    pixels = np.zeros((3, 4, 4, 3), np.uint8)
    rows = {k: np.repeat(v, 3, axis=0) for k, v in one.items()}
    frame = reference_frame(adapter, [pixels], rows)
    assert set(columns) <= set(frame.columns) and "probabilities" not in frame.columns
    assert frame["class_probability_argmax"].tolist() == [1.0] * 3
    # a region answered window by window: the mean of its windows, not the first window's
    # first value, and the class most of the region has, not an index into the windows
    windows = {
        "confidence": np.array([0.9, 0.5, 0.7]),
        "class_probability": np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9]]),
    }
    mean = {"confidence": 0.7, "class_probability": 0.4, "class_probability_argmax": 1.0}
    assert answer_columns(windows, list(windows)) == pytest.approx(mean)
