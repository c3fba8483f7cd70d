"""Classifier metrics on hand-computed cases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelcycle.evaluation.classification import calibration, score_classifier


def test_metrics_on_a_hand_computed_case() -> None:
    p = np.array([[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4]])
    y = np.array([0, 1, 1, 2])
    ev = score_classifier(p, y, ["a", "b", "c"])
    assert ev.metrics["accuracy"] == pytest.approx(0.75)
    assert ev.details["recall"] == [1.0, 0.5, 1.0]
    assert ev.metrics["min_class_recall"] == 0.5
    # F1: a 2/3 (p 0.5, r 1), b 2/3 (p 1, r 0.5), c 1
    assert ev.metrics["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert ev.details["confusion"] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    # bins: 0.9 (right), 0.6 (wrong), 0.7 (right), 0.4 (right) each alone
    assert ev.metrics["ece"] == pytest.approx((0.1 + 0.6 + 0.3 + 0.6) / 4)


def test_perfectly_calibrated_confidence_has_zero_ece() -> None:
    rng = np.random.default_rng(0)
    n = 20_000
    confidence = rng.uniform(0.5, 1.0, n)
    labels = np.where(rng.uniform(size=n) < confidence, 0, 1)  # right with that probability
    p = np.column_stack([confidence, 1 - confidence])
    ece, bins = calibration(p, labels)
    assert ece < 0.02 and sum(bins["count"]) == n


def test_absent_class_has_no_recall_but_counts_in_the_matrix() -> None:
    p = np.array([[0.8, 0.2, 0.0], [0.1, 0.9, 0.0]])
    ev = score_classifier(p, np.array([0, 1]), ["a", "b", "c"])
    assert np.isnan(ev.details["recall"][2]) and ev.metrics["min_class_recall"] == 1.0


def test_confusion_cells_show_counts_and_the_legend_stays_off_the_bars(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import matplotlib.pyplot as plt

    from modelcycle.evaluation import classification_plots
    from modelcycle.tasks.base import Evaluation

    figures: list[Any] = []
    monkeypatch.setattr(classification_plots.plt, "close", figures.append)
    classes = ["a", "b", "c"]
    matrix = [[5, 1, 0], [2, 7, 1], [0, 0, 9]]
    details = {"confusion": matrix, "classes": classes, "recall": [5 / 6, 0.7, 1.0]}
    scorers = {n: Evaluation({"accuracy": 0.84, "macro_f1": 0.8}, details) for n in ("m", "b")}
    classification_plots.plot_confusion(scorers, tmp_path / "c.png")
    classification_plots.plot_per_class(scorers, tmp_path / "r.png", "recall", "Recall", "macro_f1")
    confusion, bars = figures
    assert len(confusion.axes) == 4  # each matrix with its colour bar
    cells = [t.get_text() for t in confusion.axes[0].texts]
    assert cells == ["5", "1", "0", "2", "7", "1", "0", "0", "9"]
    ax = bars.axes[0]
    legend = ax.get_legend().get_window_extent()
    tallest = max(p.get_window_extent().y1 for p in ax.patches)
    assert legend.y0 > tallest  # above every bar, even a recall of 1
    monkeypatch.undo()  # plt.close is the real one again
    for figure in figures:
        plt.close(figure)
