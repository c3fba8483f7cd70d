"""Scores and plots of a segmentation: pixel confusion, Dice and IoU per class, example tiles."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from modelcycle.data.image_set import IGNORE
from modelcycle.evaluation.classification_plots import plot_confusion, plot_per_class
from modelcycle.tasks.base import Evaluation
from modelcycle.tasks.segmentation_serving import dice_per_class, palette, pixel_confusion


@dataclass
class Examples:
    """A few test tiles with their true and predicted masks, for the example plot.

    Kept in an evaluation's details as one object: the curves file records its text only.
    """

    images: np.ndarray
    truth: np.ndarray
    predicted: np.ndarray

    def __str__(self) -> str:
        return f"{len(self.images)} example tiles (in the examples plot)"


def score_segmentation(
    predicted: np.ndarray, truth: np.ndarray, classes: list[str], images: np.ndarray | None = None
) -> Evaluation:
    """Pixel accuracy, mean Dice and mean IoU over classes, and Dice per class.

    A class neither in the truth nor predicted is left out of the means (its Dice is
    undefined); `IGNORE` pixels are not scored.

    Args:
        predicted: (n, h, w) class indices.
        truth: (n, h, w) class indices or `IGNORE`.
        classes: Class names, in index order.
        images: (n, h, w, 3) the tiles, to keep the first few as examples.
    """
    matrix = pixel_confusion(predicted, truth, len(classes))
    hits = np.diag(matrix)
    union = matrix.sum(0) + matrix.sum(1)
    dice = dice_per_class(matrix)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, hits / (union - hits), np.nan)
    scored = matrix.sum()
    metrics = {
        "pixel_accuracy": float(hits.sum() / scored) if scored else float("nan"),
        "mean_dice": float(np.nanmean(dice)) if np.isfinite(dice).any() else float("nan"),
        "mean_iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
    } | {f"dice_{name}": float(d) for name, d in zip(classes, dice, strict=True)}
    details: dict[str, object] = {
        "confusion": matrix.tolist(),
        "classes": list(classes),
        "dice": [None if np.isnan(d) else float(d) for d in dice],
    }
    if images is not None:
        first = slice(0, min(4, len(images)))
        details["examples"] = Examples(images[first], truth[first], predicted[first])
    return Evaluation(metrics, details)


def colour_masks(masks: np.ndarray) -> np.ndarray:
    """(..., h, w) class indices → (..., h, w, 3) uint8 colours, as the served mask draws them."""
    table = np.array(palette(256), dtype=np.uint8)
    table[IGNORE] = 0
    return table[masks]


def plot_segmentation(scorers: dict[str, Evaluation], out_dir: Path, tag: str) -> list[Path]:
    """`<tag>_confusion.png`, `<tag>_dice.png` and (with examples) `<tag>_examples.png`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [
        plot_confusion(scorers, out_dir / f"{tag}_confusion.png", "pixel_accuracy"),
        plot_per_class(scorers, out_dir / f"{tag}_dice.png", "dice", "Dice per class", "mean_dice"),
    ]
    if all("examples" in ev.details for ev in scorers.values()):
        paths.append(_examples(scorers, out_dir / f"{tag}_examples.png"))
    return paths


def _examples(scorers: dict[str, Evaluation], path: Path) -> Path:
    """A row per example tile: the tile, its true mask, then each scorer's mask."""
    shown = {name: ev.details["examples"] for name, ev in scorers.items()}
    first = next(iter(shown.values()))
    assert isinstance(first, Examples)
    rows, cols = len(first.images), 2 + len(shown)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
    for r in range(rows):
        panels = [("tile", first.images[r]), ("truth", colour_masks(first.truth[r]))]
        panels += [(name, colour_masks(ex.predicted[r])) for name, ex in shown.items()]
        for ax, (title, picture) in zip(axes[r], panels, strict=True):
            ax.imshow(picture, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
    classes = next(iter(scorers.values())).details["classes"]
    assert isinstance(classes, list)
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=np.array(colour_masks(np.array([i]))[0]) / 255)
        for i in range(len(classes))
    ]
    fig.legend(handles, classes, loc="lower center", ncol=len(classes), fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
