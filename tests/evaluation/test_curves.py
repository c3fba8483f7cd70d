"""A fold's curves, compacted: small, JSON-safe, and still the curves the plots showed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from modelcycle.evaluation.curves import MAX_POINTS, compact, points, write_curves
from modelcycle.tasks.base import Evaluation


def test_short_sequences_are_kept_and_long_ones_sampled_at_even_ranks() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=5000)
    out = compact({"short": np.arange(5.0), "long": scores, "name": "x", "k": np.int64(3)})
    assert out["short"] == [0.0, 1.0, 2.0, 3.0, 4.0] and out["name"] == "x" and out["k"] == 3
    long = out["long"]
    assert long["n"] == 5000 and len(long["sorted_sample"]) == MAX_POINTS
    sample = np.array(long["sorted_sample"])
    assert np.all(np.diff(sample) >= 0)
    assert sample[0] == pytest.approx(scores.min(), rel=1e-4)
    assert sample[-1] == pytest.approx(scores.max(), rel=1e-4)
    assert np.median(sample) == pytest.approx(np.median(scores), abs=0.02)
    json.dumps(out, allow_nan=False)  # plain JSON


def test_a_long_roc_keeps_its_points_paired() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 4000)
    fpr, tpr, _ = roc_curve(labels, labels + rng.normal(scale=1.5, size=4000))
    assert len(fpr) > MAX_POINTS  # otherwise nothing is sampled
    sampled = compact({"roc": (fpr, tpr)})["roc"]
    got = np.array([points(sampled[0]), points(sampled[1])]).T  # (MAX_POINTS, 2)
    assert got.shape == (MAX_POINTS, 2)
    # every kept (fpr, tpr) is a point of the original curve, up to the kept digits
    distance = np.abs(got[:, None, :] - np.c_[fpr, tpr][None]).max(axis=2).min(axis=1)
    assert distance.max() < 1e-4
    assert tuple(got[0]) == (0.0, 0.0) and tuple(got[-1]) == (1.0, 1.0)


def test_numbers_are_rounded_nan_is_null_and_compacting_twice_changes_nothing() -> None:
    once = compact({"x": [1 / 3, float("nan"), float("inf")], "m": [[1, 2], [3, 4]]})
    assert once == {"x": [0.33333, None, None], "m": [[1, 2], [3, 4]]}
    long = compact(np.linspace(0, 1, 1000))
    assert compact(long) == long and compact(once) == once
    assert points(once["x"])[0] == pytest.approx(0.33333) and np.isnan(points(once["x"])[1])


def test_write_curves_holds_every_scorer(tmp_path: Path) -> None:
    model = Evaluation(
        {"auc": 0.9},
        {"retrieval": np.array([0.5, 0.75]), "roc": ([0, 1], [0, 1]), "where": Path("a/b")},
    )
    baseline = Evaluation({"auc": 0.8}, {"retrieval": np.array([0.25, 0.5]), "roc": ([0], [0])})
    path = write_curves({"model": model, "baseline": baseline}, tmp_path / "r", "fold3")
    assert path.name == "fold3_curves.json"
    saved = json.loads(path.read_text())
    assert saved["model"]["retrieval"] == [0.5, 0.75] and saved["baseline"]["roc"] == [[0], [0]]
    assert saved["model"]["where"] == "a/b"  # not JSON: kept as text, the run goes on
