"""The segmentation task: grouped folds, Dice and IoU, the loss, the baseline, the adapter."""

from __future__ import annotations

import base64
import io
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modelcycle.config import ConfigError, assemble, compose_config
from modelcycle.data.bcss import BCSSSource, write_bcss_standin
from modelcycle.data.image_set import IGNORE, ImageSet
from modelcycle.evaluation.segmentation import score_segmentation
from modelcycle.models.segmenter import (
    SegmentationSizeError,
    Segmenter,
    monai_unet,
    segmentation_loss,
)
from modelcycle.serving.adapter import Rows
from modelcycle.tasks.image_serving import png_bytes
from modelcycle.tasks.segmentation import SegmentationTask, colour_baseline
from modelcycle.tasks.segmentation_serving import SegmentationServing, mean_dice

CLASSES = ["other", "tumor", "stroma"]


@pytest.fixture(scope="module")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> ImageSet:
    root = write_bcss_standin(tmp_path_factory.mktemp("bcss"), slides=6, tiles=6, seed=1)
    return BCSSSource(root=root, image_size=32).load()


def small_task(data_root: Path | None = None, **settings: float) -> SegmentationTask:
    source = BCSSSource(root=data_root, image_size=32)
    unet = partial(monai_unet, width=4, depth=3, res_units=1)
    return SegmentationTask(source, unet, **settings)  # type: ignore[arg-type]


@pytest.mark.parametrize("n_folds", [1, 3])
def test_folds_keep_every_slide_in_one_part(tiles: ImageSet, n_folds: int) -> None:
    assert tiles.groups is not None
    folds = small_task().folds(tiles, n_folds, seed=0)
    assert len(folds) == n_folds
    tested = np.concatenate([f.test for f in folds])
    if n_folds > 1:  # every tile is tested once
        assert sorted(tested.tolist()) == list(range(len(tiles)))
    for fold in folds:
        parts = [set(tiles.groups[rows]) for rows in (fold.train, fold.val, fold.test)]
        assert all(parts), "a part without tiles"
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    final = small_task().final_fold(tiles, seed=0)
    assert not set(tiles.groups[final.train]) & set(tiles.groups[final.val])
    assert len(final.test) == 0


def test_more_folds_than_slides_names_slides(tiles: ImageSet) -> None:
    from modelcycle.data.tables import DataError

    with pytest.raises(DataError, match=r"number of slides \(6\), or 1 for one grouped holdout"):
        small_task().folds(tiles, 7, seed=0)


def test_dice_and_iou_by_hand_with_ignored_pixels_left_out() -> None:
    truth = np.array([[[0, 0, 1, 1], [2, 2, IGNORE, IGNORE]]], dtype=np.uint8)
    guess = np.array([[[0, 1, 1, 1], [2, 0, 2, 0]]], dtype=np.uint8)
    scores = score_segmentation(guess, truth, CLASSES).metrics
    # other: 1 hit, 2 true + 2 guessed (the ignored pixels' guesses do not count)
    # tumor: 2 hits, 2 true + 3 guessed; stroma: 1 hit, 2 true + 1 guessed
    assert scores["dice_other"] == pytest.approx(2 * 1 / 4)
    assert scores["dice_tumor"] == pytest.approx(2 * 2 / 5)
    assert scores["dice_stroma"] == pytest.approx(2 * 1 / 3)
    assert scores["mean_dice"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert scores["mean_iou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert scores["pixel_accuracy"] == pytest.approx(4 / 6)
    assert mean_dice(guess, truth, 3) == pytest.approx(scores["mean_dice"])


def test_a_class_nowhere_is_left_out_of_the_means() -> None:
    truth = np.zeros((1, 4, 4), np.uint8)
    scores = score_segmentation(truth.copy(), truth, CLASSES).metrics
    assert scores["mean_dice"] == 1.0 and np.isnan(scores["dice_tumor"])


def test_the_loss_ignores_unlabelled_pixels_and_rewards_the_truth() -> None:
    torch.manual_seed(0)
    masks = torch.randint(0, 3, (2, 8, 8))
    masks[:, :2] = IGNORE
    logits = torch.randn(2, 3, 8, 8)
    changed = logits.clone()
    changed[:, :, :2] = 100 * torch.randn(2, 3, 2, 8)  # only ignored pixels differ
    loss = segmentation_loss(logits, masks, dice_weight=1.0)
    assert torch.isclose(loss, segmentation_loss(changed, masks, dice_weight=1.0))
    truth = torch.where(masks == IGNORE, 0, masks)
    right = 10 * torch.nn.functional.one_hot(truth, 3).permute(0, 3, 1, 2).float()
    assert segmentation_loss(right, masks, 1.0) < 0.05 < loss
    assert segmentation_loss(logits, masks, 0.0) < loss  # the Dice term adds to cross-entropy


def test_the_colour_baseline_beats_one_class_everywhere(tiles: ImageSet) -> None:
    assert tiles.masks is not None
    fold = small_task().folds(tiles, 1, seed=0)[0]
    predicted = colour_baseline(tiles, fold.train, fold.test, pixels=50_000)
    truth = tiles.masks[fold.test]
    baseline = score_segmentation(predicted, truth, CLASSES).metrics
    majority = np.bincount(tiles.masks[fold.train].ravel()).argmax()
    one_class = score_segmentation(np.full_like(truth, majority), truth, CLASSES).metrics
    assert baseline["mean_dice"] > one_class["mean_dice"] + 0.2


def test_a_side_the_unet_cannot_take_says_what_to_set(tiles: ImageSet) -> None:
    source = BCSSSource(image_size=30)
    task = SegmentationTask(source, partial(monai_unet, width=4, depth=3))
    odd = ImageSet(
        tiles.images[:, :30, :30], tiles.labels, tiles.classes, masks=tiles.masks, groups=None
    )
    fold = task.final_fold(odd, seed=0)
    with pytest.raises(
        SegmentationSizeError,
        match=r"30×30 .*; it takes multiples of 4 \(e.g. 28 or 32\)\. Set data.image_size .* "
        r"lower model.depth",
    ):
        task.model(odd, fold)
    model = small_task().model(tiles, fold)
    assert isinstance(model, Segmenter)
    out = model(torch.from_numpy(tiles.images[:2]))
    assert out.shape == (2, 3, 32, 32)


def test_the_adapter_answers_a_mask_whose_pixels_are_the_classes(tiles: ImageSet) -> None:
    adapter = SegmentationServing({"classes": CLASSES, "image_size": 32})
    probabilities = np.random.default_rng(0).random((1, 3, 32, 32)).astype(np.float32)
    answer = adapter.encode(
        {"confidence": np.array([0.7], np.float32), "probabilities": probabilities}
    )
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["mask"]))))
    assert (mask == probabilities[0].argmax(axis=0)).all()
    shares = {c["class"]: c["share"] for c in answer["class_shares"]}
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["tumor"] == pytest.approx((mask == 1).mean())
    assert answer["size"] == [32, 32] and answer["classes"] == CLASSES
    assert len(answer["colours"]) == 3 and answer["confidence"] == pytest.approx(0.7)
    # the held-out metric is the mean Dice of the argmax masks
    assert tiles.masks is not None
    target = tiles.masks[:3]
    perfect = np.eye(3, dtype=np.float32)[target].transpose(0, 3, 1, 2)
    assert adapter.held_out_metric({"probabilities": perfect}, target) == 1.0
    examples = adapter.examples([tiles.images[:3]], target)
    assert len(examples) == 3 and examples[0]["label"].endswith("(held out)")
    assert adapter.decode_bytes(base64.b64decode(examples[0]["request"]["image"]))[0].shape == (
        1,
        32,
        32,
        3,
    )


def test_a_side_the_unet_cannot_take_ends_the_command_in_one_line(workspace: Path) -> None:
    from typer.testing import CliRunner

    from modelcycle.cli import app

    args = ["experiment=segmentation_bcss", "data.synthetic=true", "data.synthetic_slides=3"]
    args += ["data.synthetic_tiles=4", "data.image_size=60", "model.width=4"]
    result = CliRunner().invoke(app, ["train", *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "60×60" in result.output and "multiples of 8 (e.g. 56 or 64)" in result.output


def test_the_mask_comes_back_at_the_uploaded_tile_s_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import modelcycle.tasks.segmentation_serving as serving

    adapter = SegmentationServing({"classes": CLASSES, "image_size": 32})
    tile = np.random.default_rng(1).integers(0, 256, (50, 90, 3), dtype=np.uint8)
    rows = adapter.decode_bytes(png_bytes(tile))  # 90 wide, 50 high: not the model's square
    assert isinstance(rows, Rows) and rows.context == {"height": 50, "width": 90}
    assert rows[0].shape == (1, 32, 32, 3)

    probabilities = np.random.default_rng(0).random((1, 3, 32, 32)).astype(np.float32)
    outputs = {"confidence": np.array([0.7], np.float32), "probabilities": probabilities}
    answer = adapter.encode(outputs, rows.context)
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["mask"]))))
    assert mask.shape == (50, 90) and answer["size"] == [50, 90]
    # the probabilities resized bilinearly (pixel centres, as the tile was), then the argmax
    resized = torch.nn.functional.interpolate(
        torch.from_numpy(probabilities), size=(50, 90), mode="bilinear", align_corners=False
    )
    assert (mask == resized[0].argmax(0).numpy()).mean() > 0.999
    shares = {c["class"]: c["share"] for c in answer["class_shares"]}
    assert shares["stroma"] == pytest.approx((mask == 2).mean())
    # above SMOOTH_PIXELS, the model's classes resized to the nearest pixel
    monkeypatch.setattr(serving, "SMOOTH_PIXELS", 100)
    coarse = adapter.encode(outputs, rows.context)
    nearest = np.asarray(Image.open(io.BytesIO(base64.b64decode(coarse["mask"]))))
    small = probabilities[0].argmax(0)
    rows_at, cols_at = ((np.arange(n) + 0.5) * 32 // n for n in (50, 90))  # pixel centres
    assert nearest.shape == (50, 90)
    expected = small[np.ix_(rows_at.astype(int), cols_at.astype(int))]
    assert (nearest == expected).mean() > 0.97  # PIL rounds a few centres the other way
    assert 0.5 < (nearest == mask).mean() < 1  # the same classes, coarser borders
    # without a context (a caller of encode that has none) the mask has the model's size
    assert adapter.encode(outputs)["size"] == [32, 32]


def test_the_experiment_composes_and_refuses_what_it_cannot_build(workspace: Path) -> None:
    assembled = assemble(compose_config(["experiment=segmentation_bcss"]))
    task = assembled.task
    assert isinstance(task, SegmentationTask) and isinstance(task.source, BCSSSource)
    assert task.model_name == "segmentation_bcss" and task.source.tile == 224
    # the 512 tiling's five classes are another lineage: one name, one class set
    tiled = assemble(compose_config(["experiment=segmentation_bcss", "data.tile=512"])).task
    assert tiled.model_name == "segmentation_bcss_512"
    assert Path(task.source.download_dir) == workspace.resolve() / "data" / "bcss"
    refused = {
        "data.tile=300": r"data.tile=300: give one of 224, 512",
        "model.name=segnet": r"model.name='segnet': give one of unet, attention_unet, flexible",
        "model.depth=1": r"model.depth=1: give a value from 2 to below 8",
        "task.dice_weight=-1": r"dice_weight=-1",
    }
    for override, message in refused.items():
        with pytest.raises(ConfigError, match=message):
            assemble(compose_config(["experiment=segmentation_bcss", override]))


def test_a_dataset_without_masks_is_refused_with_the_way_out(tmp_path: Path) -> None:
    from modelcycle.data.rice import RiceSource
    from modelcycle.data.tables import DataError

    rice = RiceSource(download_dir=tmp_path, synthetic=True, image_size=16, per_class_synthetic=2)
    task = SegmentationTask(rice, partial(monai_unet, width=4, depth=3))
    with pytest.raises(DataError, match=r"rice has no masks.*data=bcss.*task=image"):
        task.load()


@pytest.mark.parametrize("name", ["unet", "attention_unet", "flexible_unet"])
def test_each_network_segments_and_exports_with_parity(name: str, tmp_path: Path) -> None:
    from modelcycle.export import check_parity, export_onnx

    torch.manual_seed(0)
    network = monai_unet(num_classes=3, name=name, width=4, depth=3)
    out = network(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 3, 32, 32)
    network.eval()
    path = export_onnx(network, (torch.rand(2, 3, 32, 32),), ["x"], ["y"], tmp_path / "m.onnx")
    parity = check_parity(
        network, path, [np.random.default_rng(0).random((3, 3, 32, 32), np.float32)]
    )
    assert parity.passed, parity


def test_windows_cover_a_large_region_with_training_tiles_and_leave_a_tile_whole() -> None:
    from modelcycle.tasks.segmentation_serving import windows

    assert windows(224, 224, 224) == [(0, 0, 224, 224)]
    assert windows(300, 330, 224) == [(0, 0, 300, 330)]  # up to 1.5 tiles: one input
    assert windows(1000, 1000, None) == [(0, 0, 1000, 1000)]  # a model saved before windows
    assert windows(448, 448, 224) == [(y, x, 224, 224) for y in (0, 224) for x in (0, 224)]
    # the last window of a row or column is aligned to the edge; a short side is whole
    assert windows(300, 500, 224) == [(y, x, 224, 224) for y in (0, 76) for x in (0, 224, 276)]
    assert windows(100, 1000, 224) == [(0, x, 100, 224) for x in (0, 224, 448, 672, 776)]
    for height, width in ((300, 500), (1000, 100), (2240, 2241)):
        covered = np.zeros((height, width), dtype=bool)
        for y, x, h, w in windows(height, width, 224):
            assert y + h <= height and x + w <= width
            covered[y : y + h, x : x + w] = True
        assert covered.all(), (height, width)
