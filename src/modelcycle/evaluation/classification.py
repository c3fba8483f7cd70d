"""Scores of a multi-class classifier: accuracy, macro-F1, per-class recall, calibration."""

from __future__ import annotations

import numpy as np

from modelcycle.tasks.base import Evaluation

ECE_BINS = 10


def score_classifier(
    probabilities: np.ndarray, labels: np.ndarray, classes: list[str]
) -> Evaluation:
    """Metrics of (n, C) class probabilities against (n,) true labels.

    `metrics`: accuracy, macro_f1 (over the classes present in `labels` or predicted),
    ece (expected calibration error, 10 equal-width confidence bins, lower is better) and
    min_class_recall. `details`: per-class recall, the confusion matrix, reliability bins.
    """
    from sklearn.metrics import confusion_matrix, f1_score

    predicted = probabilities.argmax(axis=1)
    n_classes = len(classes)
    matrix = confusion_matrix(labels, predicted, labels=np.arange(n_classes))
    support = matrix.sum(axis=1)
    present = support > 0
    recall = np.where(present, np.diag(matrix) / np.maximum(support, 1), np.nan)
    ece, bins = calibration(probabilities, labels)
    metrics = {
        "accuracy": float((predicted == labels).mean()),
        "macro_f1": float(f1_score(labels, predicted, average="macro", zero_division=0)),
        "ece": ece,
        "min_class_recall": float(np.nanmin(recall)),
    }
    details = {
        "classes": classes,
        "recall": recall.tolist(),
        "confusion": matrix.tolist(),
        "reliability": bins,
    }
    return Evaluation(metrics, details)


def calibration(
    probabilities: np.ndarray, labels: np.ndarray
) -> tuple[float, dict[str, list[float]]]:
    """Expected calibration error and the reliability diagram's bins.

    ECE = Σ_bins (n_bin / n) · |accuracy_bin − mean confidence_bin| over equal-width bins of
    the top-class confidence.
    """
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0, 1, ECE_BINS + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, ECE_BINS - 1)
    counts = np.bincount(which, minlength=ECE_BINS)
    acc = np.bincount(which, weights=correct, minlength=ECE_BINS) / np.maximum(counts, 1)
    conf = np.bincount(which, weights=confidence, minlength=ECE_BINS) / np.maximum(counts, 1)
    ece = float(np.sum(counts / max(len(labels), 1) * np.abs(acc - conf)))
    return ece, {"accuracy": acc.tolist(), "confidence": conf.tolist(), "count": counts.tolist()}
