"""Plots of a classifier beside its baseline: confusion matrices, recall, reliability."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from modelcycle.tasks.base import Evaluation

MAX_TICK_LABELS = 30  # beyond this many classes, names would overprint each other
MAX_CELL_COUNTS = 12  # up to this many classes, each confusion cell shows its count


def plot_classification(scorers: dict[str, Evaluation], out_dir: Path, tag: str) -> list[Path]:
    """`<tag>_confusion.png`, `<tag>_recall.png` and `<tag>_reliability.png` in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        plot_confusion(scorers, out_dir / f"{tag}_confusion.png"),
        _recall(scorers, out_dir / f"{tag}_recall.png"),
        _reliability(scorers, out_dir / f"{tag}_reliability.png"),
    ]


def plot_confusion(scorers: dict[str, Evaluation], path: Path, metric: str = "accuracy") -> Path:
    """Each scorer's confusion matrix (`details["confusion"]`), rows scaled to recall.

    The colour is the share of the true class's rows (its colour bar says so); with few
    classes each cell also shows its count.
    """
    fig, axes = plt.subplots(1, len(scorers), figsize=(6 * len(scorers), 5), squeeze=False)
    for ax, (name, ev) in zip(axes[0], scorers.items(), strict=True):
        matrix = np.array(ev.details["confusion"], float)
        rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)  # recall per row
        shown = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
        classes = ev.details["classes"]
        if len(classes) <= MAX_CELL_COUNTS:
            for (i, j), count in np.ndenumerate(matrix):
                colour = "white" if rows[i, j] > 0.6 else "black"
                ax.text(j, i, f"{count:,.0f}", ha="center", va="center", fontsize=7, c=colour)
        if len(classes) <= MAX_TICK_LABELS:
            ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
            ax.set_yticks(range(len(classes)), classes, fontsize=7)
        score = ev.metrics[metric]
        label = metric.replace("_", " ")
        ax.set(xlabel="predicted", ylabel="true", title=f"{name} ({label} {score:.3f})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _recall(scorers: dict[str, Evaluation], path: Path) -> Path:
    return plot_per_class(scorers, path, "recall", "Recall per class")


def plot_per_class(
    scorers: dict[str, Evaluation], path: Path, key: str, title: str, mean: str | None = None
) -> Path:
    """Bars of each scorer's `details[key]` per class (None: no bar), side by side.

    With `mean`, each scorer's legend entry shows that metric.
    """
    classes = next(iter(scorers.values())).details["classes"]
    x = np.arange(len(classes))
    width = 0.8 / len(scorers)
    few = len(classes) <= 8
    fig, ax = plt.subplots(
        figsize=(max(5 if few else 6, (0.9 if few else 0.25) * len(classes) + 3), 3.8)
    )
    for k, (name, ev) in enumerate(scorers.items()):
        values = [np.nan if v is None else v for v in ev.details[key]]
        label = f"{name} (mean {ev.metrics[mean]:.3f})" if mean else name
        ax.bar(x + (k - (len(scorers) - 1) / 2) * width, values, width, label=label)
    if few:
        ax.set_xticks(x, classes)
    elif len(classes) <= MAX_TICK_LABELS:
        ax.set_xticks(x, classes, rotation=90, fontsize=7)
    # the legend sits above the bars (which stop at 1), never on them
    ax.set(ylim=(0, 1.3), yticks=np.linspace(0, 1, 6), ylabel=key, title=title)
    ax.legend(loc="upper center", ncol=len(scorers), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _reliability(scorers: dict[str, Evaluation], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k:", label="calibrated")
    for name, ev in scorers.items():
        bins = ev.details["reliability"]
        used = np.array(bins["count"]) > 0
        conf, acc = np.array(bins["confidence"])[used], np.array(bins["accuracy"])[used]
        ax.plot(conf, acc, "o-", label=f"{name} (ECE {ev.metrics['ece']:.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title="Reliability")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
