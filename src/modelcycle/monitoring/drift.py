"""Drift: captured requests against a model version's reference sample, feature by feature.

Each drift feature (the task adapter's numbers per request), each component of the model's
embedding distance (see `modelcycle.embeddings`) and each model output is one column; a
classifier's outputs also give the predicted class (`ARGMAX`). Every number column gets a
two-sample Kolmogorov-Smirnov test, a class column a chi-square test of the class mix
(`class_mix_test`); a column drifts when its p-value is below `alpha / n_columns`
(Bonferroni), so the chance of any false alarm on an unshifted sample stays at most
`alpha`. The sample drifts when any column drifts; prediction drift is drift of an output
column (or its class), embedding drift that of the embedding distance.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from modelcycle.embedding_columns import (
    ARGMAX,
    answer_columns,
    is_class_column,
    is_embedding_column,
    monitor_columns,
)
from modelcycle.monitoring.capture import Capture
from modelcycle.serving.adapter import ServingAdapter

Status = Literal["pending", "off", "no_reference", "too_few_captures", "no_drift", "drift"]
#: Fewest random relabellings behind a class-mix p-value.
MIN_PERMUTATIONS = 999


class TooFewCapturesError(ValueError):
    """Not enough captured requests to test for drift; the message says how many are needed.

    Attributes:
        found: The captured requests there were.
        needed: The fewest a test runs on.
    """

    def __init__(self, message: str, found: int, needed: int) -> None:
        super().__init__(message)
        self.found, self.needed = found, needed


@dataclass(frozen=True)
class DriftSettings:
    """How drift is decided.

    Attributes:
        alpha: Chance of a false alarm on an unshifted sample (all columns together).
        min_captures: Fewest captured requests a test is run on.
    """

    alpha: float = 0.05
    min_captures: int = 30

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(
                f"monitor.alpha={self.alpha!r}: give the chance of a false alarm, above 0 and "
                "below 1; 0.05 is usual."
            )
        if self.min_captures < 2:
            raise ValueError(
                f"monitor.min_captures={self.min_captures!r}: give a whole number >= 2, the "
                "fewest captured requests a drift test runs on."
            )


class FeatureDrift(BaseModel):
    """One column's test: its statistic and p-value, and the means on both sides."""

    name: str
    kind: Literal["input", "output", "embedding"]
    statistic: float | None = Field(
        description="KS statistic (chi-square for a class column); null when not testable"
    )
    p_value: float | None
    drifted: bool
    reference_mean: float | None = Field(description="null for a class column")
    current_mean: float | None
    n_reference: int | None = Field(
        default=None,
        description="Reference values tested: a model output's come only from the reference "
        "rows that never trained the model",
    )


class DriftSummary(BaseModel):
    """The drift of one model version's captured requests against its reference sample."""

    model: str
    version: str | None = None
    variant: str | None = Field(
        default=None,
        description="The exported file (fp32 or int8) whose outputs made the reference",
    )
    status: Status
    detail: str = ""
    drift_detected: bool | None = None
    drifted_share: float | None = Field(
        default=None, description="Share of tested columns that drift"
    )
    prediction_drift: bool | None = Field(
        default=None, description="A model output or its class drifts; null when none is tested"
    )
    embedding_drift: bool | None = Field(
        default=None, description="The model's embedding distance drifts; null without one"
    )
    n_reference: int = 0
    n_current: int = 0
    alpha: float = 0.05
    threshold: float | None = Field(
        default=None, description="Per-column p-value threshold (Bonferroni)"
    )
    computed_at: float | None = Field(default=None, description="Unix seconds")
    features: list[FeatureDrift] = Field(default_factory=list)


def reference_frame(
    adapter: ServingAdapter,
    inputs: Sequence[np.ndarray],
    outputs: dict[str, np.ndarray],
    monitored: Sequence[str] = (),
    unseen: int | None = None,
) -> pd.DataFrame:
    """Drift features of each reference row plus the model's outputs on it.

    Args:
        adapter: The task's serving adapter, which turns one request's rows into features.
        inputs: One array per model input, rows along axis 0.
        outputs: Each model output on those rows (first axis: rows).
        monitored: Monitoring-only outputs (the embedding distance): their columns are
            `monitor_columns`', the others' `answer_columns`', as the server records them.
        unseen: Only the first `unseen` rows never trained the model: the outputs of the
            others are left out (NaN, which the tests skip). On rows it was fitted on a
            model is surer and its embedding sits elsewhere than on any new request, so
            such a reference flagged ordinary unseen traffic as drift (a GCN on Wiki-CS: 27 %
            of 40-request windows). Their input features are kept: they describe the data.
    """
    answered = [name for name in outputs if name not in monitored]
    rows = []
    for i in range(len(inputs[0])):
        row = adapter.drift_features([x[i : i + 1] for x in inputs])
        if unseen is None or i < unseen:  # the columns the server records with a request
            one = {name: values[i : i + 1] for name, values in outputs.items()}
            row |= monitor_columns(one, monitored) | answer_columns(one, answered)
        rows.append(row)
    return pd.DataFrame(rows, dtype=float)


def captures_frame(captures: Sequence[Capture]) -> pd.DataFrame:
    """One row per captured request: its drift features and outputs."""
    return pd.DataFrame([c.features | c.outputs for c in captures], dtype=float)


def compare(
    model: str,
    version: str,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    outputs: Sequence[str],
    settings: DriftSettings,
) -> DriftSummary:
    """Test every column the two frames share; raise when `current` has too few rows.

    Raises:
        TooFewCapturesError: Fewer than `settings.min_captures` current rows.
    """
    if len(current) < settings.min_captures:
        raise TooFewCapturesError(
            f"{model} version {version}: {len(current)} captured requests, at least "
            f"{settings.min_captures} are needed to test for drift (traffic marked with "
            "X-Capture-Source, such as a load test's, does not count). Send more requests, "
            "widen --since or --last, or lower monitor.min_captures.",
            len(current),
            settings.min_captures,
        )
    columns = [c for c in reference.columns if c in current.columns]
    sides = {c: (reference[c].to_numpy(), current[c].to_numpy()) for c in columns}
    n_tested = sum(_testable(*sides[c]) for c in columns)
    threshold = settings.alpha / max(n_tested, 1)
    tests = {
        c: class_mix_test(*sides[c], threshold) if is_class_column(c) else _ks(*sides[c])
        for c in columns
    }
    features = [
        FeatureDrift(
            name=c,
            kind=_kind(c, outputs),
            statistic=_finite(stat),
            p_value=_finite(p),
            drifted=bool(p < threshold),  # NaN compares False: an untestable column never drifts
            reference_mean=None if is_class_column(c) else _mean(sides[c][0]),
            current_mean=None if is_class_column(c) else _mean(sides[c][1]),
            n_reference=int(np.isfinite(sides[c][0]).sum()),
        )
        for c, (stat, p) in tests.items()
    ]
    drifted = [f for f in features if f.drifted]
    # kinds with a column tested on both sides: of the others there is nothing to say (a
    # reference whose rows all trained the model has no outputs, so none are tested)
    tested = {f.kind for f in features if _testable(*sides[f.name])}
    return DriftSummary(
        model=model,
        version=version,
        status="drift" if drifted else "no_drift",
        detail=_detail(drifted, n_tested),
        drift_detected=bool(drifted),
        drifted_share=len(drifted) / max(n_tested, 1),
        prediction_drift=(any(f.kind == "output" for f in drifted) if "output" in tested else None),
        embedding_drift=(
            any(f.kind == "embedding" for f in drifted) if "embedding" in tested else None
        ),
        n_reference=len(reference),
        n_current=len(current),
        alpha=settings.alpha,
        threshold=threshold,
        computed_at=time.time(),
        features=features,
    )


def _kind(column: str, outputs: Sequence[str]) -> Literal["input", "output", "embedding"]:
    if column in outputs or (is_class_column(column) and column[: -len(ARGMAX)] in outputs):
        return "output"
    return "embedding" if is_embedding_column(column) else "input"


def _testable(reference: np.ndarray, current: np.ndarray) -> bool:
    """Whether both sides have two finite values at least."""
    return bool(np.isfinite(reference).sum() >= 2 and np.isfinite(current).sum() >= 2)


def _ks(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """KS statistic and p-value on the finite values; NaN when either side has under two."""
    from scipy.stats import ks_2samp

    if not _testable(reference, current):
        return math.nan, math.nan
    result = ks_2samp(reference[np.isfinite(reference)], current[np.isfinite(current)])
    return float(result.statistic), float(result.pvalue)


def class_mix_test(
    reference: np.ndarray, current: np.ndarray, threshold: float
) -> tuple[float, float]:
    """Chi-square statistic of the two class mixes and its permutation p-value.

    The class indices of both sides (finite values) form a 2 × classes table. With a few
    dozen requests over many classes most expected counts are under 5, where the
    chi-square distribution misstates the p-value; so the p-value is the share of random
    relabellings of the pooled requests (seeded: the same data, the same p-value) whose
    statistic reaches the observed one. There are enough of them to resolve a tenth of
    `threshold`, the per-column threshold the p-value is held against. NaN when either
    side has under two values.
    """
    if not _testable(reference, current):
        return math.nan, math.nan
    reference = reference[np.isfinite(reference)]
    current = current[np.isfinite(current)]
    _, codes = np.unique(np.concatenate([reference, current]), return_inverse=True)
    classes, n_current = int(codes.max()) + 1, len(current)
    totals = np.bincount(codes, minlength=classes).astype(float)
    expected_current = totals * n_current / len(codes)
    expected_reference = totals - expected_current

    def statistic(current_counts: np.ndarray) -> np.ndarray:
        reference_counts = totals - current_counts
        return (
            (current_counts - expected_current) ** 2 / expected_current
            + (reference_counts - expected_reference) ** 2 / expected_reference
        ).sum(axis=-1)

    observed = float(statistic(np.bincount(codes[len(reference) :], minlength=classes)))
    if classes == 1:
        return observed, 1.0
    draws = max(MIN_PERMUTATIONS, math.ceil(10 / threshold))
    rng = np.random.default_rng(0)
    relabelled = rng.permuted(np.tile(codes.astype(np.int32), (draws, 1)), axis=1)
    offsets = classes * np.arange(draws, dtype=np.int64)[:, None]
    counts = np.bincount((relabelled[:, :n_current] + offsets).ravel(), minlength=draws * classes)
    null = statistic(counts.reshape(draws, classes).astype(float))
    reached = int((null >= observed * (1 - 1e-9)).sum())
    return observed, (1 + reached) / (1 + draws)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _mean(values: np.ndarray) -> float | None:
    """The mean of the finite values; None without any."""
    finite = values[np.isfinite(values)]
    return _finite(float(finite.mean())) if len(finite) else None


def _detail(drifted: list[FeatureDrift], n_tested: int) -> str:
    if not drifted:
        return f"none of {n_tested} columns drifts"
    names = ", ".join(f.name for f in drifted)
    return f"{len(drifted)} of {n_tested} columns drift: {names}"
