"""How often the drift test fires on windows of a fixed size: false alarms and detections.

Windows are drawn (seeded, without replacement inside a window) from a pool of rows that
stand for requests, e.g. held-out pairs as they are or with a shift injected. The share of
windows flagged is the false-alarm rate on an unshifted pool and the detection rate on a
shifted one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from modelcycle.monitoring.drift import DriftSettings, compare


@dataclass(frozen=True)
class WindowRates:
    """Share of windows flagged as drift, overall and per column."""

    flagged: float
    per_column: dict[str, float]
    windows: int
    window: int


def flag_rate(
    reference: pd.DataFrame,
    pool: pd.DataFrame,
    outputs: Sequence[str],
    window: int,
    n_windows: int,
    settings: DriftSettings,
    seed: int,
) -> WindowRates:
    """Test `n_windows` windows of `window` rows drawn from `pool` against `reference`.

    Raises:
        ValueError: The pool has fewer rows than a window.
    """
    if len(pool) < window:
        raise ValueError(f"the pool has {len(pool)} rows, fewer than a window of {window}.")
    rng = np.random.default_rng(seed)
    flagged, per_column = 0, dict.fromkeys(reference.columns, 0)
    for _ in range(n_windows):
        rows = pool.iloc[rng.choice(len(pool), size=window, replace=False)]
        summary = compare("pool", "-", reference, rows, outputs, settings)
        flagged += bool(summary.drift_detected)
        for feature in summary.features:
            per_column[feature.name] += feature.drifted
    return WindowRates(
        flagged=flagged / n_windows,
        per_column={k: v / n_windows for k, v in per_column.items()},
        windows=n_windows,
        window=window,
    )
