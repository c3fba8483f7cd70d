"""Plots of kinship evaluations: ROC curves, similarity histograms, retrieval curves."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import numpy as np

from modelcycle.tasks.base import Evaluation


def plot_kinship(evaluations: Mapping[str, Evaluation], out_dir: Path, tag: str) -> list[Path]:
    """Write `{tag}_roc.png`, `{tag}_similarity.png` and `{tag}_retrieval.png`.

    Args:
        evaluations: Scorer name (e.g. "model", "baseline") → its evaluation with details.
        out_dir: Folder for the images.
        tag: Prefix of the file names, e.g. "fold0".
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        _roc(evaluations, out_dir / f"{tag}_roc.png"),
        _histograms(evaluations, out_dir / f"{tag}_similarity.png"),
        _retrieval(evaluations, out_dir / f"{tag}_retrieval.png"),
    ]


def _roc(evaluations: Mapping[str, Evaluation], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, ev in evaluations.items():
        fpr, tpr = ev.details["roc"]
        auc = ev.metrics["auc_twin_vs_unrelated"]
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        title="Twin-like vs unrelated pairs",
    )
    ax.legend(loc="lower right")
    return _save(fig, path)


def _histograms(evaluations: Mapping[str, Evaluation], path: Path) -> Path:
    fig, axes = plt.subplots(1, len(evaluations), figsize=(5 * len(evaluations), 3.8))
    for ax, (name, ev) in zip(np.atleast_1d(axes), evaluations.items(), strict=True):
        every = np.concatenate([s for s in ev.details["scores"].values() if len(s)])
        bins = np.linspace(every.min(), every.max(), 31)  # shared, so relations compare
        for relation, scores in ev.details["scores"].items():
            if len(scores):
                ax.hist(
                    scores,
                    bins=bins,
                    density=True,
                    histtype="step",
                    lw=1.5,
                    label=f"{relation} (n={len(scores)})",
                )
        ax.set(xlabel="pair similarity", ylabel="density", title=name)
        ax.legend(fontsize=7)
    return _save(fig, path)


def _retrieval(evaluations: Mapping[str, Evaluation], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, ev in evaluations.items():
        curve = ev.details["retrieval"]
        ax.plot(np.arange(1, len(curve) + 1), curve, marker="o", ms=3, label=name)
    ax.set(xlabel="k", ylabel="co-twin within top k", ylim=(0, 1.02), title="Co-twin retrieval")
    ax.legend(loc="lower right")
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
