"""int8 from export to serving: static QDQ for a conv model, its metric delta, serve.variant."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from image_fixtures import PublishedImage, publish_image
from modelcycle.config import compose_config
from modelcycle.export import CALIBRATION_ROWS
from modelcycle.registry import Registry
from modelcycle.servable import read_manifest
from modelcycle.serving.loading import ModelLoadError, VariantChoice, load_served
from modelcycle.serving.server import build_server
from modelcycle.tracking import Tracker, TrackingSettings

REFERENCE = "image@champion"


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> PublishedImage:
    """A tiny rice model trained until its top-1 beats chance, so its classes are not tied."""
    tmp = tmp_path_factory.mktemp("int8")
    return publish_image(tmp, Tracker(TrackingSettings(), tmp / "ws"), epochs=15)


@pytest.fixture(scope="module")
def files(published: PublishedImage) -> Path:
    """The downloaded version: manifest, held-out and reference rows, onnx/ exports."""
    registry = published.registry
    version = registry.resolve(REFERENCE)
    return registry.download(version, published.root / "check")


def _outputs(path: Path, pixels: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return list(session.run(None, {"pixels": pixels}))


@contextmanager
def _tags(registry: Registry, tags: dict[str, str | None]) -> Iterator[None]:
    """Set (or, for None, delete) version tags for the block; restore them after."""
    version = registry.resolve(REFERENCE)
    try:
        for key, value in tags.items():
            if value is None:
                registry.client.delete_model_version_tag(version.name, version.version, key)
            else:
                registry.set_tags(version, {key: value})
        yield
    finally:
        registry.set_tags(version, {k: version.tags[k] for k in tags if k in version.tags})


def test_conv_model_gets_static_int8_calibrated_on_reference_rows(
    published: PublishedImage, files: Path
) -> None:
    tags = published.registry.resolve(REFERENCE).tags
    with np.load(files / "reference.npz") as arrays:
        n_reference = len(arrays["pixels"])
    rows = min(CALIBRATION_ROWS, n_reference)
    assert tags["export.int8.method"] == f"static-qdq ({rows} reference rows)"
    ops = {node.op_type for node in onnx.load(str(files / "onnx" / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops and "ConvInteger" not in ops
    assert "static-qdq" in (files / "onnx" / "export.md").read_text()


def test_static_int8_agrees_with_fp32_on_the_held_out_images(files: Path) -> None:
    with np.load(files / "held_out.npz") as arrays:
        pixels = arrays["pixels"]
    _, fp32, _ = _outputs(files / "onnx" / "model.onnx", pixels)
    _, int8, _ = _outputs(files / "onnx" / "model.int8.onnx", pixels)
    assert not np.array_equal(fp32, int8)  # really quantized
    assert np.abs(fp32 - int8).max() < 0.05
    assert (fp32.argmax(axis=1) == int8.argmax(axis=1)).mean() >= 0.9


def test_metric_delta_is_the_image_tasks_top1_on_held_out_labels(
    published: PublishedImage, files: Path
) -> None:
    tags = published.registry.resolve(REFERENCE).tags
    info = read_manifest(files)["info"]
    with np.load(files / "held_out.npz") as arrays:
        pixels = arrays["pixels"]
    truth = np.array([info["classes"].index(label) for label in info["held_out_labels"]])
    for variant, name in (("fp32", "model.onnx"), ("int8", "model.int8.onnx")):
        _, probabilities, _ = _outputs(files / "onnx" / name, pixels)
        top1 = float((probabilities.argmax(axis=1) == truth).mean())
        assert float(tags[f"export.metric.{variant}"]) == pytest.approx(top1, abs=1e-6)
    assert tags["export.metric.name"] == "top-1 accuracy"
    delta = float(tags["export.metric.int8"]) - float(tags["export.metric.fp32"])
    assert float(tags["export.metric.delta"]) == pytest.approx(delta, abs=1e-6)


def _png(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_serve_variant_int8_answers_from_the_int8_file(
    published: PublishedImage, files: Path
) -> None:
    cfg = compose_config(
        [f"workspace={published.root}", "serve.variant=int8", "serve.capture=false"]
    )
    app, config = build_server(cfg, [REFERENCE])
    assert config.variant == VariantChoice("int8", 0.01)
    with np.load(files / "held_out.npz") as arrays:
        image = arrays["pixels"][:1]
    _, want, _ = _outputs(files / "onnx" / "model.int8.onnx", image)
    _, fp32, _ = _outputs(files / "onnx" / "model.onnx", image)
    assert not np.allclose(want, fp32, atol=1e-6)  # the two files can be told apart
    with TestClient(app) as client:
        (model,) = client.get("/v1/models").json()["models"]
        assert model["variant"] == "int8" and model["lineage"]["variant"] == "int8"
        assert model["lineage"]["int8.method"].startswith("static-qdq")
        assert model["lineage"]["metric.name"] == "top-1 accuracy"
        assert "fp32.sha256" not in model["lineage"]
        response = client.post("/v1/models/image/predict", json={"image": _png(image[0])})
        # /metrics told fp32 and int8 servers apart only by their /v1/models
        assert 'variant="int8"' in client.get("/metrics").text
    assert response.status_code == 200, response.text
    top = {t["class"]: t["probability"] for t in response.json()["outputs"]["top_k"]}
    classes = read_manifest(files)["info"]["classes"]
    for name, probability in top.items():
        assert probability == pytest.approx(float(want[0, classes.index(name)]), abs=1e-5)


def test_int8_is_refused_when_its_metric_drops_beyond_the_limit(
    published: PublishedImage, tmp_path: Path
) -> None:
    registry = published.registry
    tags = registry.resolve(REFERENCE).tags
    fp32, int8 = float(tags["export.metric.fp32"]), float(tags["export.metric.int8"])
    strict = VariantChoice("int8", int8_max_drop=fp32 - int8 - 0.05)  # demands a gain
    with pytest.raises(ModelLoadError) as refused:
        load_served(registry, REFERENCE, tmp_path, threads=1, variant=strict)
    message = str(refused.value)
    assert f"{int8:.4f}" in message and f"{fp32:.4f}" in message
    assert f"serve.int8_max_drop={strict.int8_max_drop:g}" in message
    assert "serve.variant=fp32" in message
    # one image of 45 was a drop of 0.022, over the 0.01 limit: the count says why
    rows = tags["export.metric.rows"]
    assert f"on {float(rows):.0f} held-out rows" in message and "task.held_out_rows" in message
    with _tags(registry, {"export.metric.int8": f"{fp32 - 0.2:.6f}"}):
        cfg = compose_config([f"workspace={published.root}", "serve.variant=int8"])
        with pytest.raises(ModelLoadError, match=r"a drop of 0\.2000, more than .*=0\.01"):
            build_server(cfg, [REFERENCE])
        loose = VariantChoice("int8", int8_max_drop=0.25)
        assert load_served(registry, REFERENCE, tmp_path, 1, loose).variant == "int8"


def test_int8_is_refused_without_a_recorded_delta(
    published: PublishedImage, tmp_path: Path
) -> None:
    registry = published.registry
    with (
        _tags(registry, {"export.metric.delta": None}),
        pytest.raises(ModelLoadError, match=r"recorded no int8 top-1 accuracy delta"),
    ):
        load_served(registry, REFERENCE, tmp_path, 1, VariantChoice("int8"))


def test_int8_is_refused_when_its_hash_does_not_match(
    published: PublishedImage, tmp_path: Path
) -> None:
    registry = published.registry
    with (
        _tags(registry, {"export.int8.sha256": "0" * 64}),
        pytest.raises(ModelLoadError, match=r"does not match the int8 export recorded.*export"),
    ):
        load_served(registry, REFERENCE, tmp_path, 1, VariantChoice("int8"))
    with (
        _tags(registry, {"export.int8.sha256": None}),
        pytest.raises(ModelLoadError, match=r"has no int8 ONNX export; run `modelcycle export"),
    ):
        load_served(registry, REFERENCE, tmp_path, 1, VariantChoice("int8"))
    # fp32 is untouched by any of it
    assert load_served(registry, REFERENCE, tmp_path, 1).variant == "fp32"


def test_hot_reload_loads_the_same_variant_of_the_new_version(
    published: PublishedImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    import modelcycle.serving.server as server

    reloaders: list[Any] = []

    def capture(*args: Any, **kwargs: Any) -> Any:
        reloaders.append(args[3])  # create_app(load, settings, capture, reload, drift)
        return None

    monkeypatch.setattr(server, "create_app", capture)
    cfg = compose_config([f"workspace={published.root}", "serve.variant=int8"])
    build_server(cfg, [REFERENCE])
    (reload,) = reloaders
    current = load_served(published.registry, REFERENCE, published.root / "c", 1)
    current.version = "0"  # as if the alias had since moved to version 1
    fresh = reload(current)
    assert fresh is not None and (fresh.version, fresh.variant) == ("1", "int8")
