"""Classifier metrics on hand-computed cases."""

from __future__ import annotations

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
