"""Image classification: rice varieties, Oxford Flowers-102 or Sign Language MNIST.

Data: an `ImageSource` (`modelcycle.data.rice`, `.flowers102`, `.signmnist`) read into an
`ImageSet`. Model: any timm backbone behind in-model pixel normalisation. Baseline: the
nearest class mean of colour and intensity histograms, fitted on the same training rows; the
majority-class share is reported beside it for orientation.

Splits: the official split where the dataset has one (Flowers-102: train/val/test;
Sign Language MNIST: the test CSV, validation carved from the training CSV), then there is
exactly one fold; otherwise `cv.n_folds` stratified folds, or one stratified holdout when
`cv.n_folds=1`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from modelcycle.data.image_set import (
    ImageSet,
    ImageSource,
    official_rows,
    stratified_holdout,
    stratified_kfold,
)
from modelcycle.data.tables import DataError
from modelcycle.embedding_columns import EMBEDDING
from modelcycle.evaluation.classification import score_classifier
from modelcycle.evaluation.classification_plots import plot_classification
from modelcycle.models.image_classifier import (
    ImageClassifier,
    PixelClassifier,
    check_image_size,
    normalizer_for,
    timm_backbone,
)
from modelcycle.models.inference import evaluating
from modelcycle.ranks import validation_loader
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
from modelcycle.tasks.image_serving import ImageServing, image_features

log = logging.getLogger(__name__)

FINAL = -1
HIST_BINS = 8


@register_task("image")
class ImageTask(Task[ImageSet]):
    """A timm classifier beside a nearest-class-mean histogram baseline.

    Args:
        source: Where the images come from.
        encoder: Builds the backbone from `num_classes` (a partial from the model config).
        lr: Peak learning rate (cosine schedule over the epochs).
        weight_decay: AdamW weight decay.
        label_smoothing: Cross-entropy label smoothing.
        hflip: Random left-right flips in training (off for hand signs: handedness matters).
        shift: Largest random translation in training, in pixels.
        batch_size: Images per batch.
        num_workers: DataLoader worker processes (0: load in the training process).
        val_fraction: Share of each class's training rows held out for early stopping.
        test_fraction: Share of each class tested when there is no official split and one fold.
        held_out_rows: Validation images saved with the deployable model (export, examples).
        reference_rows: Images saved as its drift reference sample: the validation images
            that are not held out first, topped up with training images (seeded draws).
        top_k: Classes a served prediction lists.
    """

    serving = ImageServing
    data_sources = (ImageSource,)
    model_targets = (timm_backbone,)
    primary_metric = "macro_f1"
    unit = "images"
    monitor = "val_accuracy"
    summary_metrics = ("accuracy", "macro_f1", "min_class_recall", "ece")

    def __init__(
        self,
        source: ImageSource,
        encoder: Callable[..., nn.Module],
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        label_smoothing: float = 0.1,
        hflip: bool = True,
        shift: int = 4,
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.2,
        held_out_rows: int = 48,
        reference_rows: int = 400,
        top_k: int = 5,
    ) -> None:
        check_settings(
            positive={"lr": lr},
            # export checks parity, and robustness scores, on the held-out rows: none fails
            # there, after the run was trained and registered
            whole={"batch_size": batch_size, "top_k": top_k, "held_out_rows": held_out_rows},
            shares={"val_fraction": val_fraction, "test_fraction": test_fraction},
            non_negative={
                "weight_decay": weight_decay,
                "label_smoothing": label_smoothing,
                "shift": shift,
                "num_workers": num_workers,
            },
        )
        if reference_rows < 2:  # it failed in a traceback once the final fit had trained
            raise ValueError(
                f"reference_rows={reference_rows!r}: give a whole number >= 2; the drift "
                "reference fits the embedding distance's components on these images."
            )
        if label_smoothing > 1:
            raise ValueError(f"label_smoothing={label_smoothing!r}: give a number from 0 to 1.")
        self.source, self.encoder = source, encoder
        self.lr, self.weight_decay, self.label_smoothing = lr, weight_decay, label_smoothing
        self.hflip, self.shift = hflip, shift
        self.batch_size, self.num_workers = batch_size, num_workers
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.held_out_rows, self.reference_rows, self.top_k = held_out_rows, reference_rows, top_k

    def load(self) -> tuple[ImageSet, DataSummary]:
        """Read the images; count them per class and per official split part."""
        data = self.source.load()
        counts = {"images": len(data), "classes": len(data.classes)}
        if data.split is not None:
            counts |= {str(p): int((data.split == p).sum()) for p in np.unique(data.split)}
        per_class = data.class_counts()
        smallest, largest = min(per_class, key=per_class.get), max(per_class, key=per_class.get)  # type: ignore[arg-type]
        balance = (
            f"class balance: every class {per_class[smallest]}"
            if per_class[smallest] == per_class[largest]
            else f"class balance: smallest {smallest} ({per_class[smallest]}), "
            f"largest {largest} ({per_class[largest]})"
        )
        notes = [*data.notes, balance]
        log.info("Images per class: %s", per_class)
        return data, DataSummary(data.data_hash, counts, notes)

    def folds(self, data: ImageSet, n_folds: int, seed: int) -> list[Fold]:
        """The official split as one fold, else stratified folds (one holdout for n_folds=1)."""
        if data.split is not None:
            if n_folds != 1:
                log.info(
                    "%s has an official test split: one fold, cv.n_folds=%d not used",
                    self.source.dataset,
                    n_folds,
                )
            train_rows = official_rows(data.split, "train")
            train, val = self._train_val(data, train_rows, seed)
            fold = Fold(0, train, val, official_rows(data.split, "test"))
            return [self._check_parts(data, fold, train_rows, 2, "training and validation")]
        everyone = np.arange(len(data))
        if n_folds == 1:
            rest, test = stratified_holdout(data.labels, everyone, self.test_fraction, seed)
            train, val = stratified_holdout(data.labels, rest, self.val_fraction, seed + 1)
            folds = [Fold(0, train, val, test)]
        else:
            folds = []
            for k, test in enumerate(stratified_kfold(data.labels, n_folds, seed)):
                rest = np.setdiff1d(everyone, test)
                train, val = stratified_holdout(data.labels, rest, self.val_fraction, seed + k)
                folds.append(Fold(k, train, val, test))
        parts = "training, validation and test"
        return [self._check_parts(data, fold, everyone, 3, parts) for fold in folds]

    def _check_parts(
        self, data: ImageSet, fold: Fold, rows: np.ndarray, need: int, parts: str
    ) -> Fold:
        """`fold`, once none of its parts (but a final fold's test part) is empty.

        A class gives up an image to a held-out part only while it keeps one, so classes of
        one or two images can leave the validation part empty, and early stopping then
        has no metric to watch.

        Raises:
            DataError: Naming the empty part, the smallest class of `rows` and the images
                per class that `parts` need (`need`).
        """
        named = {"training": fold.train, "validation": fold.val, "test": fold.test}
        empty = [name for name, part in named.items() if len(part) == 0]
        if fold.index == FINAL:
            empty = [name for name in empty if name != "test"]
        if not empty:
            return fold
        counts = np.bincount(data.labels[rows], minlength=len(data.classes))
        smallest = int(np.argmin(np.where(counts > 0, counts, np.iinfo(int).max)))
        raise DataError(
            f"{self.source.dataset}: the {' and '.join(empty)} "
            f"{'part is' if len(empty) == 1 else 'parts are'} empty: the smallest "
            f"class, {data.classes[smallest]}, has {counts[smallest]} image(s) to split into "
            f"{parts}, and each class needs at least {need}. Give more images per class "
            "(data.max_per_class), or leave out the smallest classes."
        )

    def _train_val(
        self, data: ImageSet, train: np.ndarray, seed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The official validation part when there is one, else a stratified carve of `train`."""
        assert data.split is not None
        val = official_rows(data.split, "val")
        if len(val):
            return train, val
        return stratified_holdout(data.labels, train, self.val_fraction, seed)

    def final_fold(self, data: ImageSet, seed: int) -> Fold:
        """Every image trains but the validation ones (the official ones when there are)."""
        everyone = np.arange(len(data))
        if data.split is not None and len(official_rows(data.split, "val")):
            val = official_rows(data.split, "val")
            return Fold(FINAL, np.setdiff1d(everyone, val), val, np.array([], dtype=int))
        train, val = stratified_holdout(data.labels, everyone, self.val_fraction, seed)
        fold = Fold(FINAL, train, val, np.array([], dtype=int))
        return self._check_parts(data, fold, everyone, 2, "training and validation")

    def datamodule(self, data: ImageSet, fold: Fold, seed: int) -> L.LightningDataModule:
        """uint8 pixels and labels of the fold's train and validation rows."""
        return TensorData(
            _dataset(data, fold.train), _dataset(data, fold.val), self.batch_size, self.num_workers
        )

    def model(self, data: ImageSet, fold: Fold) -> L.LightningModule:
        """A fresh timm backbone with a `len(classes)`-way head and its normalisation."""
        backbone = self.encoder(num_classes=len(data.classes))
        check_image_size(backbone, data.images.shape[1])
        return ImageClassifier(
            backbone,
            normalizer_for(backbone),
            self.lr,
            self.weight_decay,
            self.label_smoothing,
            self.hflip,
            self.shift,
        )

    def baseline(self, data: ImageSet, fold: Fold) -> Evaluation:
        """Nearest class mean of histograms fitted on `fold.train`, scored on `fold.test`."""
        probabilities = nearest_class_mean(data, fold.train, fold.test)
        return score_classifier(probabilities, data.labels[fold.test], data.classes)

    def evaluate(self, module: L.LightningModule, data: ImageSet, fold: Fold) -> Evaluation:
        """Softmax of the model on `fold.test`."""
        probabilities = predict_probabilities(module, data.images[fold.test])
        return score_classifier(probabilities, data.labels[fold.test], data.classes)

    def servable(self, module: L.LightningModule, data: ImageSet, fold: Fold) -> ServableModel:
        """Pixels in; confidence, probabilities and embedding out.

        Held-out rows are validation images; the drift reference is a seeded draw of
        validation images, every class represented, topped up with training images when
        there are too few (`unseen_first`).
        """
        assert isinstance(module, ImageClassifier)
        rows = _spread(data.labels, fold.val, self.held_out_rows)

        def spread(pool: np.ndarray, n: int) -> np.ndarray:
            drawn = np.random.default_rng(0).permutation(pool)
            return np.sort(_spread(data.labels, drawn, n))

        reference, unseen = unseen_first(fold, rows, self.reference_rows, spread)
        size = int(data.images.shape[1])
        return ServableModel(
            task=self.name,
            module=PixelClassifier(module),
            input_names=["pixels"],
            output_names=["confidence", "probabilities", EMBEDDING],
            held_out=[data.images[rows]],
            reference=[data.images[reference]],
            reference_unseen=unseen,
            info={
                "dataset": self.source.dataset,
                "classes": data.classes,
                "image_size": size,
                "background": list(self.source.background),
                "top_k": min(self.top_k, len(data.classes)),
                "held_out_labels": [data.classes[i] for i in data.labels[rows]],
            },
        )

    @property
    def model_name(self) -> str:
        """One registered model per dataset (image_rice, …): their metrics do not compare."""
        return f"{self.name}_{self.source.dataset}"

    def reference(self, data: ImageSet) -> dict[str, float]:
        """The majority class's share of all images: what always guessing it would score."""
        return {"majority_class_share": float(np.bincount(data.labels).max() / len(data))}

    def plot(self, model: Evaluation, baseline: Evaluation, out_dir: Path, tag: str) -> list[Path]:
        """Confusion matrices, recall per class and reliability diagrams, model beside baseline."""
        return plot_classification({"model": model, "baseline": baseline}, out_dir, tag)


class TensorData(L.LightningDataModule):
    """Shuffled training rows; validation rows in order, each validated once under DDP.

    Any pair of tensor datasets: images and labels, images and masks.
    """

    def __init__(
        self, train: TensorDataset, val: TensorDataset, batch_size: int, num_workers: int
    ) -> None:
        super().__init__()
        self.train, self.val = train, val
        self.batch_size, self.num_workers = batch_size, num_workers

    def train_dataloader(self) -> DataLoader[tuple[torch.Tensor, ...]]:
        """Shuffled training images (Lightning shards them under DDP), pinned for a GPU.

        A last batch of one image is dropped: BatchNorm cannot train on a batch of one
        ("Expected more than 1 value per channel"). Only that one image is left out, a
        different one each epoch as the order is shuffled, so every image is still seen;
        a longer last batch is kept, as dropping it always would leave out up to a batch
        each epoch (and all of a training part smaller than a batch).
        """
        world = self.trainer.world_size if self.trainer is not None else 1
        per_process = -(-len(self.train) // world)  # Lightning's sampler pads to equal shares
        return DataLoader(
            self.train,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=per_process % self.batch_size == 1 and per_process > 1,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
        )

    def val_dataloader(self) -> DataLoader[tuple[torch.Tensor, ...]]:
        """Validation images; under DDP every n-th per process, none counted twice."""
        return validation_loader(self.val, self.batch_size, self.num_workers, self.trainer)


def _dataset(data: ImageSet, rows: np.ndarray) -> TensorDataset:
    return TensorDataset(
        torch.from_numpy(data.images[rows]), torch.from_numpy(data.labels[rows].astype(np.int64))
    )


def _spread(labels: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """Up to `n` of `rows`, taking classes in turn so that every class is represented."""
    by_class = [rows[labels[rows] == c] for c in np.unique(labels[rows])]
    order = [r for group in _interleave(by_class) for r in group]
    return np.array(order[:n], dtype=int)


def _interleave(groups: list[np.ndarray]) -> list[list[int]]:
    depth = max((len(g) for g in groups), default=0)
    return [[int(g[i]) for g in groups if i < len(g)] for i in range(depth)]


def predict_probabilities(
    module: L.LightningModule, images: np.ndarray, batch: int = 256
) -> np.ndarray:
    """(n, classes) softmax of `module` over uint8 images, in batches, without gradients."""
    out = []
    with evaluating(module):
        for start in range(0, len(images), batch):
            logits = module(torch.from_numpy(images[start : start + batch]))
            out.append(torch.softmax(logits, dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def histogram_features(images: np.ndarray) -> np.ndarray:
    """Per image: 8-bin histograms of each colour channel and of brightness, and drift features.

    The drift features are those a served model records (brightness, contrast, sharpness,
    colour means); shape (n, 4·8 + 6).
    """
    gray = images.mean(axis=3, keepdims=True)
    stacked = np.concatenate([images.astype(np.float32), gray], axis=3)  # (n, h, w, 4)
    bins = np.minimum((stacked / 256 * HIST_BINS).astype(int), HIST_BINS - 1)
    pixels = images.shape[1] * images.shape[2]
    hist = (
        np.stack(
            [
                np.stack([np.bincount(b[..., c].ravel(), minlength=HIST_BINS) for c in range(4)])
                for b in bins
            ]
        ).reshape(len(images), -1)
        / pixels
    )
    described = np.array([list(image_features(im[None]).values()) for im in images])
    return np.concatenate([hist, described], axis=1)


def nearest_class_mean(data: ImageSet, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Nearest-class-mean probabilities of `test` rows, shape (len(test), classes).

    Softmax of negative squared distances to each class's mean feature vector (features
    z-scored on `train`); the temperature is the median training distance to the nearest mean.
    """
    features = histogram_features(data.images[np.r_[train, test]])
    mu, sd = features[: len(train)].mean(0), features[: len(train)].std(0) + 1e-6
    z = (features - mu) / sd
    n_classes = len(data.classes)
    means = np.stack(
        [
            z[: len(train)][data.labels[train] == c].mean(0)
            if (data.labels[train] == c).any()
            else np.full(z.shape[1], np.inf)
            for c in range(n_classes)
        ]
    )
    d2 = ((z[:, None, :] - means[None]) ** 2).sum(-1)  # (n, classes)
    temperature = float(np.median(np.min(d2[: len(train)], axis=1))) + 1e-6
    logits = -d2[len(train) :] / temperature
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)
