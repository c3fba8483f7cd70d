"""The image task: folds, tiny training runs per dataset, baseline, export parity, drift."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from image_fixtures import tiny_sources, tiny_task
from modelcycle.data.tables import DataError
from modelcycle.embeddings import project_embeddings
from modelcycle.export import export_model
from modelcycle.models.image_classifier import ImageClassifier
from modelcycle.tasks import get_task
from modelcycle.tasks.image import ImageTask, histogram_features, nearest_class_mean
from modelcycle.tasks.image_serving import image_features
from modelcycle.training import TrainerSettings, fit

QUICK = TrainerSettings(max_epochs=4, min_epochs=4, patience=4, progress_bar=False)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    return dict(tiny_sources(tmp_path_factory.mktemp("images")))


def test_registered_by_name_with_one_model_name_per_dataset(sources: dict[str, object]) -> None:
    assert get_task("image") is ImageTask
    assert tiny_task(sources["signmnist"]).model_name == "image_signmnist"  # type: ignore[arg-type]


def test_class_balance_names_the_smallest_and_largest_class(tmp_path: Path) -> None:
    source = tiny_sources(tmp_path)["rice"]
    source.load()  # writes the stand-in: 16 images per class
    for image in sorted((tmp_path / "rice" / "Rice_Image_Dataset" / "Jasmine").iterdir())[:5]:
        image.unlink()
    summary = tiny_task(tiny_sources(tmp_path)["rice"]).load()[1]
    assert summary.notes[-1].startswith("class balance: smallest Jasmine (11), largest ")


def test_no_held_out_rows_is_refused_before_anything_trains(sources: dict[str, object]) -> None:
    # Export checks parity on them: with none, `pipeline` trained and registered the model,
    # then ended in a traceback from the export.
    task = tiny_task(sources["rice"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^held_out_rows=0: give a whole number >= 1\.$"):
        ImageTask(task.source, task.encoder, held_out_rows=0)


@pytest.mark.parametrize("rows", [0, 1])
def test_a_drift_reference_of_under_two_images_is_refused_before_anything_trains(
    sources: dict[str, object], rows: int
) -> None:
    # The embedding distance is fitted on the reference: with none, `pipeline` trained every
    # fold and the final fit, then ended in a traceback as it saved the model.
    task = tiny_task(sources["rice"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=rf"^reference_rows={rows}: give a whole number >= 2; "):
        ImageTask(task.source, task.encoder, reference_rows=rows)


def test_rice_folds_are_stratified_and_disjoint(sources: dict[str, object]) -> None:
    task = tiny_task(sources["rice"])  # type: ignore[arg-type]
    data, summary = task.load()
    assert summary.counts == {"images": 80, "classes": 5}
    assert "class balance: every class 16" in summary.notes
    folds = task.folds(data, 3, seed=0)
    tests = np.concatenate([f.test for f in folds])
    assert sorted(tests.tolist()) == list(range(80))
    for f in folds:
        parts = [set(f.train), set(f.val), set(f.test)]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert set(data.labels[f.test]) == set(data.labels[f.val]) == set(range(5))
    (holdout,) = task.folds(data, 1, seed=0)
    assert len(holdout.test) == 5 * round(0.2 * 16)
    final = task.final_fold(data, seed=0)
    assert len(final.test) == 0 and len(final.train) + len(final.val) == 80


@pytest.mark.parametrize("per_class", [1, 2])
def test_classes_too_small_to_split_are_refused_by_name(
    sources: dict[str, object], per_class: int
) -> None:
    rice = tiny_task(sources["rice"])  # type: ignore[arg-type]
    task = tiny_task(replace(rice.source, max_per_class=per_class))
    data, _ = task.load()
    for n_folds in (1, 2) if per_class == 2 else (1,):  # 2 folds of 1 image: cv.n_folds refused
        with pytest.raises(DataError, match=r"rice: the validation (and test )?parts? (is|are) em"):
            task.folds(data, n_folds, seed=0)
        with pytest.raises(DataError, match=rf"Arborio, has {per_class} image.*at least 3\."):
            task.folds(data, n_folds, seed=0)
    if per_class == 1:
        with pytest.raises(DataError, match=r"has 1 image\(s\) to split into training and val"):
            task.final_fold(data, seed=0)
    else:
        assert len(task.final_fold(data, seed=0).val) == len(data.classes)


def test_official_splits_make_one_fold(sources: dict[str, object]) -> None:
    sign = tiny_task(sources["signmnist"])  # type: ignore[arg-type]
    data, summary = sign.load()
    assert summary.counts["test"] == 72 and summary.counts["train"] == 144
    (fold,) = sign.folds(data, 5, seed=0)  # n_folds does not apply to an official split
    assert data.split is not None
    assert (data.split[fold.test] == "test").all() and len(fold.test) == 72
    assert (data.split[fold.val] == "train").all() and set(data.labels[fold.val]) == set(range(24))
    flowers = tiny_task(sources["flowers102"])  # type: ignore[arg-type]
    fdata, _ = flowers.load()
    (ffold,) = flowers.folds(fdata, 1, seed=0)
    assert fdata.split is not None
    assert (fdata.split[ffold.val] == "val").all() and (fdata.split[ffold.train] == "train").all()
    final = flowers.final_fold(fdata, 0)
    assert (fdata.split[final.val] == "val").all() and len(final.train) == 24 + 16


@pytest.mark.parametrize("name", ["rice", "flowers102", "signmnist"])
def test_tiny_training_run_per_dataset(
    name: str, sources: dict[str, object], tmp_path: Path
) -> None:
    task = tiny_task(sources[name])  # type: ignore[arg-type]
    data, _ = task.load()
    (fold,) = task.folds(data, 1, seed=0)
    torch.manual_seed(0)
    module = task.model(data, fold)
    before = task.evaluate(module, data, fold)
    fit(module, task.datamodule(data, fold, 0), QUICK, task.monitor, tmp_path, [])
    after, baseline = task.evaluate(module, data, fold), task.baseline(data, fold)
    for ev in (after, baseline):
        assert set(ev.metrics) >= set(task.summary_metrics)
        assert 0 <= ev.metrics["macro_f1"] <= 1 and 0 <= ev.metrics["ece"] <= 1
        assert len(ev.details["recall"]) == len(data.classes)
        assert np.array(ev.details["confusion"]).sum() == len(fold.test)
    chance = 1 / len(data.classes)
    assert baseline.metrics["accuracy"] > 1.5 * chance  # the stand-ins carry colour/shape signal
    assert after.metrics != before.metrics  # training changed the model's predictions
    plots = task.plot(after, baseline, tmp_path, "fold0")
    assert [p.name for p in plots] == [
        "fold0_confusion.png",
        "fold0_recall.png",
        "fold0_reliability.png",
    ]
    assert all(p.stat().st_size > 5000 for p in plots)


def test_a_last_training_batch_of_one_image_is_dropped(
    sources: dict[str, object], tmp_path: Path
) -> None:
    """BatchNorm cannot train on one image: a training part of a batch plus one still trains."""
    rice = tiny_task(sources["rice"])  # type: ignore[arg-type]
    data, _ = rice.load()
    (fold,) = rice.folds(data, 1, seed=0)
    task = ImageTask(rice.source, rice.encoder, batch_size=len(fold.train) - 1)
    datamodule = task.datamodule(data, fold, 0)
    sizes = [len(labels) for _, labels in datamodule.train_dataloader()]
    assert sizes == [len(fold.train) - 1]  # one image left out, a different one each epoch
    longer = ImageTask(rice.source, rice.encoder, batch_size=len(fold.train) - 2)
    assert [len(y) for _, y in longer.datamodule(data, fold, 0).train_dataloader()][-1] == 2
    torch.manual_seed(0)
    module = task.model(data, fold)
    one_epoch = TrainerSettings(max_epochs=1, min_epochs=1, patience=1, progress_bar=False)
    fit(module, datamodule, one_epoch, task.monitor, tmp_path, [])


def test_model_learns_rice_beyond_chance(sources: dict[str, object], tmp_path: Path) -> None:
    task = tiny_task(sources["rice"])  # type: ignore[arg-type]
    data, _ = task.load()
    (fold,) = task.folds(data, 1, seed=0)
    torch.manual_seed(0)
    module = task.model(data, fold)
    on_train = type(fold)(0, fold.train, fold.val, fold.train)
    untrained = task.evaluate(module, data, on_train).metrics["accuracy"]
    settings = TrainerSettings(max_epochs=15, min_epochs=15, patience=15, progress_bar=False)
    fit(module, task.datamodule(data, fold, 0), settings, task.monitor, tmp_path, [])
    trained = task.evaluate(module, data, on_train).metrics["accuracy"]
    assert trained > 0.35 and trained > untrained + 0.1  # 5 classes: chance is 0.2


def test_bf16_mixed_training_trains_and_exports_fp32(
    sources: dict[str, object], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import onnx

    task = tiny_task(sources["rice"])  # type: ignore[arg-type]
    data, _ = task.load()
    (fold,) = task.folds(data, 1, seed=0)
    torch.manual_seed(0)
    module = task.model(data, fold)
    before = task.evaluate(module, data, fold)
    settings = replace(QUICK, precision="bf16-mixed")
    with caplog.at_level(logging.INFO):
        fit(module, task.datamodule(data, fold, 0), settings, task.monitor, tmp_path, [])
    assert "Training precision: bf16-mixed (trainer.precision=bf16-mixed)" in caplog.text
    after = task.evaluate(module, data, fold)
    assert after.metrics != before.metrics and np.isfinite(after.details["confusion"]).all()
    assert {p.dtype for p in module.parameters()} == {torch.float32}  # autocast, fp32 weights
    servable = task.servable(module, data, fold)
    report = export_model(
        servable.module,
        servable.example(),
        servable.input_names,
        servable.output_names,
        tmp_path / "onnx",
        servable.held_out,
        batch_sizes=(1,),
        repeats=2,
    )
    assert report.parity.passed and report.parity.max_abs < 1e-4
    graph = onnx.load(str(tmp_path / "onnx" / "model.onnx")).graph
    weights = {init.data_type for init in graph.initializer if len(init.dims) > 1}
    assert weights == {onnx.TensorProto.FLOAT}


def test_nearest_class_mean_recovers_colour_classes(sources: dict[str, object]) -> None:
    data, _ = tiny_task(sources["flowers102"]).load()  # type: ignore[arg-type]
    train = np.flatnonzero(data.split != "test")
    test = np.flatnonzero(data.split == "test")
    p = nearest_class_mean(data, train, test)
    assert p.shape == (len(test), 4) and np.allclose(p.sum(axis=1), 1)
    assert (p.argmax(1) == data.labels[test]).mean() >= 0.75  # hue differs by class
    assert histogram_features(data.images[:2]).shape == (2, 4 * 8 + 6)


def test_export_parity_with_raw_uint8_pixels(sources: dict[str, object], tmp_path: Path) -> None:
    task = tiny_task(sources["rice"])  # type: ignore[arg-type]
    data, _ = task.load()
    fold = task.final_fold(data, 0)
    module = task.model(data, fold)
    assert isinstance(module, ImageClassifier)
    servable = task.servable(module, data, fold)
    assert servable.held_out[0].dtype == np.uint8 and servable.held_out[0].shape[1:] == (24, 24, 3)
    assert set(servable.info["held_out_labels"]) == set(data.classes)  # every class represented
    # drift reference: validation images first (their outputs are what new images' are like),
    # topped up with training images, whose outputs the reference leaves out
    assert servable.reference is not None
    reference, unseen = servable.reference[0], servable.reference_unseen
    others = len(fold.val) - len(servable.held_out[0])  # not the held-out ones, which score int8
    assert unseen == min(task.reference_rows, others) and unseen < len(reference)
    assert len(reference) == min(task.reference_rows, len(fold.train) + others)
    assert not any((reference == image).all(axis=(1, 2, 3)).any() for image in servable.held_out[0])

    def among(images: np.ndarray, rows: np.ndarray) -> bool:
        pool = data.images[rows]
        return all((pool == image).all(axis=(1, 2, 3)).any() for image in images)

    assert among(reference[:unseen], fold.val) and among(reference[unseen:], fold.train)
    project_embeddings(servable)
    assert servable.output_names == ["confidence", "probabilities", "embedding_distance"]
    report = export_model(
        servable.module,
        servable.example(),
        servable.input_names,
        servable.output_names,
        tmp_path,
        servable.held_out,
        batch_sizes=(1,),
        repeats=2,
    )
    assert report.parity.passed and report.parity.max_abs < 1e-4
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)"
    confidence, probabilities, distance = session.run(None, {"pixels": servable.held_out[0]})
    assert distance.shape == (len(servable.held_out[0]),) and (distance >= 0).all()
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert np.allclose(confidence, probabilities.max(axis=1))


def test_drift_features_separate_darkened_and_blurred_images(sources: dict[str, object]) -> None:
    from scipy.stats import ks_2samp

    data, _ = tiny_task(sources["flowers102"]).load()  # type: ignore[arg-type]
    images = data.images
    half = len(images) // 2
    darkened = (images * 0.5).astype(np.uint8)
    blurred = (
        (
            images[:, :-1, :-1].astype(float)
            + images[:, 1:, 1:]
            + images[:, 1:, :-1]
            + images[:, :-1, 1:]
        )
        / 4
    ).astype(np.uint8)

    def feature(batch: np.ndarray, name: str) -> np.ndarray:
        return np.array([image_features(im[None])[name] for im in batch])

    for name in ("brightness", "contrast", "red", "green"):
        shifted = ks_2samp(feature(images[:half], name), feature(darkened[half:], name))
        same = ks_2samp(feature(images[:half], name), feature(images[half:], name))
        assert shifted.pvalue < 0.01 and same.pvalue > 0.05, name
    assert feature(blurred, "sharpness").mean() < 0.8 * feature(images, "sharpness").mean()
    flat = image_features(np.full((1, 8, 8, 3), 128, np.uint8))
    assert flat["contrast"] == 0 and flat["sharpness"] == 0
    assert flat["brightness"] == pytest.approx(128 / 255, abs=1e-6)


@pytest.mark.parametrize("side", [8, 224, 300])  # 300² pixels: beyond exact float32 sums
def test_image_features_match_their_definition(side: int) -> None:
    """The fast uint8 arithmetic gives the definition's values, computed plainly in float64."""
    pixels = np.random.default_rng(side).integers(0, 256, (1, side, side, 3), dtype=np.uint8)
    rgb = pixels[0] / 255.0
    luminance = rgb @ np.array([0.299, 0.587, 0.114])
    laplacian = (
        luminance[:-2, 1:-1]
        + luminance[2:, 1:-1]
        + luminance[1:-1, :-2]
        + luminance[1:-1, 2:]
        - 4 * luminance[1:-1, 1:-1]
    )
    expected = {
        "brightness": luminance.mean(),
        "contrast": luminance.std(),
        "sharpness": laplacian.std(),
        **dict(zip(("red", "green", "blue"), rgb.reshape(-1, 3).mean(axis=0), strict=True)),
    }
    assert image_features(pixels) == pytest.approx(expected, abs=2e-6)
