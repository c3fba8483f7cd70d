"""Semantic segmentation of histology tiles: BCSS (breast cancer) with a MONAI U-Net.

Data: an `ImageSource` whose `ImageSet` has masks (`modelcycle.data.bcss`). Model: a MONAI
U-Net behind pixel normalisation fitted on the training tiles. Baseline: the nearest class
mean colour of each pixel (after a light blur), fitted on the same training tiles; what
labelling every pixel with the most frequent class scores is reported beside it.

Splits keep each group's tiles (a slide's: one patient's) in one part: `cv.n_folds` grouped
folds, or one grouped holdout when `cv.n_folds=1`. Tiles cut from one slide look alike, so
a split by tile would score the model on slides it trained on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from modelcycle.data.bcss import BCSSSource
from modelcycle.data.image_set import IGNORE, ImageSet, ImageSource
from modelcycle.data.splits import group_holdout, group_kfold
from modelcycle.data.tables import DataError
from modelcycle.evaluation.segmentation import plot_segmentation, score_segmentation
from modelcycle.models.image_classifier import PixelNormalize
from modelcycle.models.inference import evaluating
from modelcycle.models.segmenter import (
    PixelSegmenter,
    Segmenter,
    check_segmentation_size,
    monai_unet,
)
from modelcycle.servable import ServableModel
from modelcycle.tasks.base import (
    DataSummary,
    Evaluation,
    Fold,
    Task,
    check_settings,
    register_task,
    unseen_first,
)
from modelcycle.tasks.image import TensorData
from modelcycle.tasks.segmentation_serving import SegmentationServing

log = logging.getLogger(__name__)

FINAL = -1
#: Blur (pixels, Gaussian sigma) before the baseline reads a pixel's colour.
BASELINE_BLUR = 1.0


@register_task("segmentation")
class SegmentationTask(Task[ImageSet]):
    """A U-Net beside a nearest-class-mean colour baseline, scored by Dice over classes.

    Args:
        source: Where the tiles and masks come from.
        encoder: Builds the network from `num_classes` (a partial from the model config).
        lr: Peak learning rate (cosine schedule over the epochs).
        weight_decay: AdamW weight decay.
        dice_weight: Weight of the soft Dice loss beside cross-entropy (0: cross-entropy only).
        batch_size: Tiles per batch.
        num_workers: DataLoader worker processes (0: load in the training process).
        val_fraction: Share of the training groups held out for early stopping.
        test_fraction: Share of the groups tested when `cv.n_folds=1`.
        held_out_rows: Validation tiles saved with the deployable model (export, examples).
        reference_rows: Training tiles saved as its drift reference sample (seeded draw).
        baseline_pixels: Training pixels the baseline's class means are fitted on (seeded).
    """

    serving = SegmentationServing
    data_sources = (BCSSSource,)
    model_targets = (monai_unet,)
    primary_metric = "mean_dice"
    unit = "tiles"
    monitor = "val_mean_dice"
    summary_metrics = ("mean_dice", "mean_iou", "pixel_accuracy")

    def __init__(
        self,
        source: ImageSource,
        encoder: Callable[..., nn.Module],
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        dice_weight: float = 1.0,
        batch_size: int = 16,
        num_workers: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.2,
        held_out_rows: int = 16,
        reference_rows: int = 200,
        baseline_pixels: int = 200_000,
    ) -> None:
        check_settings(
            positive={"lr": lr},
            whole={
                "batch_size": batch_size,
                "baseline_pixels": baseline_pixels,
                "held_out_rows": held_out_rows,
            },
            shares={"val_fraction": val_fraction, "test_fraction": test_fraction},
            non_negative={
                "weight_decay": weight_decay,
                "dice_weight": dice_weight,
                "num_workers": num_workers,
                "reference_rows": reference_rows,
            },
        )
        self.source, self.encoder = source, encoder
        self.lr, self.weight_decay, self.dice_weight = lr, weight_decay, dice_weight
        self.batch_size, self.num_workers = batch_size, num_workers
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.held_out_rows, self.reference_rows = held_out_rows, reference_rows
        self.baseline_pixels = baseline_pixels

    def load(self) -> tuple[ImageSet, DataSummary]:
        """Read the tiles and masks; count tiles and groups, and each class's pixel share."""
        data = self.source.load()
        if data.masks is None:
            raise DataError(
                f"{self.source.dataset} has no masks: the segmentation task needs a dataset "
                "of tiles with masks (data=bcss); classify its images with task=image instead."
            )
        groups = _groups(data)
        counts = {"tiles": len(data), "groups": len(np.unique(groups))}
        scored = data.masks[data.masks != IGNORE]
        shares = np.bincount(scored, minlength=len(data.classes)) / max(scored.size, 1)
        described = ", ".join(
            f"{name} {share:.1%}" for name, share in zip(data.classes, shares, strict=True)
        )
        notes = [*data.notes, f"pixels per class: {described}"]
        if scored.size < data.masks.size:
            notes.append(f"{1 - scored.size / data.masks.size:.1%} of pixels belong to no class")
        return data, DataSummary(data.data_hash, counts, notes)

    def folds(self, data: ImageSet, n_folds: int, seed: int) -> list[Fold]:
        """Grouped folds (one grouped holdout for n_folds=1), validation groups carved out."""
        groups = _groups(data)
        everyone = np.arange(len(data))
        if n_folds == 1:
            rest, test = group_holdout(groups, everyone, self.test_fraction, seed)
            train, val = group_holdout(groups, rest, self.val_fraction, seed + 1)
            return [Fold(0, train, val, test)]
        folds = []
        for k, test in enumerate(group_kfold(groups, n_folds, seed, "slides", holdout=True)):
            rest = np.setdiff1d(everyone, test)
            train, val = group_holdout(groups, rest, self.val_fraction, seed + k)
            folds.append(Fold(k, train, val, test))
        return folds

    def final_fold(self, data: ImageSet, seed: int) -> Fold:
        """Every tile trains but a grouped validation share; no test tiles."""
        train, val = group_holdout(_groups(data), np.arange(len(data)), self.val_fraction, seed)
        return Fold(FINAL, train, val, np.array([], dtype=int))

    def datamodule(self, data: ImageSet, fold: Fold, seed: int) -> L.LightningDataModule:
        """uint8 tiles and their masks, for the fold's train and validation rows."""
        return TensorData(
            _dataset(data, fold.train), _dataset(data, fold.val), self.batch_size, self.num_workers
        )

    def model(self, data: ImageSet, fold: Fold) -> L.LightningModule:
        """A fresh U-Net behind normalisation by the training tiles' channel mean and spread."""
        network = self.encoder(num_classes=len(data.classes))
        check_segmentation_size(network, int(data.images.shape[1]))
        train = data.images[fold.train].reshape(-1, 3).astype(np.float64) / 255.0
        normalize = PixelNormalize(
            tuple(train.mean(axis=0).tolist()), tuple((train.std(axis=0) + 1e-6).tolist())
        )
        return Segmenter(
            network, normalize, len(data.classes), self.lr, self.weight_decay, self.dice_weight
        )

    def baseline(self, data: ImageSet, fold: Fold) -> Evaluation:
        """Each pixel's blurred colour given the nearest training class mean."""
        assert data.masks is not None
        predicted = colour_baseline(data, fold.train, fold.test, self.baseline_pixels)
        test = fold.test
        return score_segmentation(predicted, data.masks[test], data.classes, data.images[test])

    def evaluate(self, module: L.LightningModule, data: ImageSet, fold: Fold) -> Evaluation:
        """The model's argmax masks on `fold.test`."""
        assert data.masks is not None
        predicted = predict_masks(module, data.images[fold.test])
        test = fold.test
        return score_segmentation(predicted, data.masks[test], data.classes, data.images[test])

    def servable(self, module: L.LightningModule, data: ImageSet, fold: Fold) -> ServableModel:
        """Pixels in; confidence, mean class probabilities and probability maps out.

        Held-out rows are validation tiles, saved with their masks; the drift reference is a
        seeded draw of validation tiles, topped up with training tiles (`unseen_first`).
        """
        assert isinstance(module, Segmenter) and data.masks is not None
        rows = fold.val[: self.held_out_rows]
        reference, unseen = unseen_first(fold, rows, self.reference_rows)
        return ServableModel(
            task=self.name,
            module=PixelSegmenter(module),
            input_names=["pixels"],
            output_names=["confidence", "class_probability", "probabilities"],
            held_out=[data.images[rows]],
            target=data.masks[rows],
            reference=[data.images[reference]],
            reference_unseen=unseen,
            info={
                "dataset": self.source.dataset,
                "classes": data.classes,
                "image_size": int(data.images.shape[1]),
                "background": list(self.source.background),
                # the training tiles' side in pixels: larger uploads are cut into such windows
                "tile": getattr(self.source, "tile", None),
            },
        )

    @property
    def model_name(self) -> str:
        """One registered model per dataset and class set (segmentation_bcss, …).

        BCSS's 512 tiling segments five classes where the 224 tiling's three, so it is its
        own lineage, segmentation_bcss_512: registered under one name, a promotion would
        change the served classes under the same model name.
        """
        tile = getattr(self.source, "tile", None)
        default = getattr(type(self.source), "tile", None)  # a dataclass field's default
        return f"{self.name}_{self.source.dataset}" + ("" if tile == default else f"_{tile}")

    def reference(self, data: ImageSet) -> dict[str, float]:
        """What labelling every pixel with the most frequent class scores, over all tiles."""
        assert data.masks is not None
        counts = np.bincount(data.masks[data.masks != IGNORE], minlength=len(data.classes))
        majority = np.full_like(data.masks, int(counts.argmax()))
        scores = score_segmentation(majority, data.masks, data.classes).metrics
        return {f"majority_class_{k}": scores[k] for k in ("pixel_accuracy", "mean_dice")}

    def plot(self, model: Evaluation, baseline: Evaluation, out_dir: Path, tag: str) -> list[Path]:
        """Confusion matrices, Dice per class and example tiles, model beside baseline."""
        return plot_segmentation({"model": model, "baseline": baseline}, out_dir, tag)


def _groups(data: ImageSet) -> np.ndarray:
    """Each tile's group; tiles without one are each their own."""
    return data.groups if data.groups is not None else np.arange(len(data)).astype(str)


def _dataset(data: ImageSet, rows: np.ndarray) -> TensorDataset:
    assert data.masks is not None
    return TensorDataset(torch.from_numpy(data.images[rows]), torch.from_numpy(data.masks[rows]))


def predict_masks(module: L.LightningModule, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """(n, h, w) argmax class of `module` over uint8 tiles, in batches, without gradients."""
    out = []
    with evaluating(module):
        for start in range(0, len(images), batch):
            logits = module(torch.from_numpy(images[start : start + batch]))
            out.append(logits.argmax(dim=1).numpy().astype(np.uint8))
    return np.concatenate(out) if out else np.zeros((0, *images.shape[1:3]), np.uint8)


def colour_baseline(data: ImageSet, train: np.ndarray, test: np.ndarray, pixels: int) -> np.ndarray:
    """(len(test), h, w) class of each test pixel: the nearest training class mean colour.

    Colours are blurred (`BASELINE_BLUR`) so a pixel reads its neighbourhood a little, then
    z-scored on the training pixels; the class means come from up to `pixels` training
    pixels drawn with a fixed seed. A class with no training pixel is never predicted.
    """
    from scipy.ndimage import gaussian_filter

    assert data.masks is not None

    def blurred(rows: np.ndarray) -> np.ndarray:
        images = data.images[rows].astype(np.float32)
        return gaussian_filter(images, sigma=(0, BASELINE_BLUR, BASELINE_BLUR, 0))

    colours = blurred(train).reshape(-1, 3)
    labels = data.masks[train].reshape(-1)
    keep = np.flatnonzero(labels != IGNORE)
    keep = np.random.default_rng(0).permutation(keep)[:pixels]
    colours, labels = colours[keep], labels[keep]
    mu, sd = colours.mean(axis=0), colours.std(axis=0) + 1e-6
    z = (colours - mu) / sd
    means = np.stack(
        [
            z[labels == c].mean(axis=0) if (labels == c).any() else np.full(3, np.inf)
            for c in range(len(data.classes))
        ]
    )
    test_z = (blurred(test) - mu) / sd  # (n, h, w, 3)
    distances = ((test_z[..., None, :] - means) ** 2).sum(axis=-1)  # (n, h, w, classes)
    return distances.argmin(axis=-1).astype(np.uint8)
